"""Where and how a training runs: device, precision and data-parallel processes.

``device="auto"`` means CUDA when torch sees one, the CPU otherwise. Mixed precision
(``torch.autocast``) is used on CUDA only, in bfloat16 where the GPU has it natively
(compute capability ≥ 8, no GradScaler needed) and in float16 with a GradScaler
otherwise. ``gpus`` is the number of data-parallel processes: one per CUDA device on a
GPU machine (NCCL), or that many CPU processes talking gloo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlops.errors import TrainingError

PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def pick_device(requested: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "device 'cuda' was asked for but no CUDA device is available "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
            "use device 'auto' or 'cpu', or run on a GPU work pool"
        )
    return torch.device(requested)


def pick_precision(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for plain float32.

    bfloat16 only where the GPU computes it natively: emulated bfloat16 on older GPUs
    is slower than float16 with loss scaling."""
    if not mixed_precision or device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name logged as the run's ``precision``."""
    return "fp32" if amp_dtype is None else PRECISION_NAMES[amp_dtype]


@dataclass(frozen=True)
class TrainingPlan:
    """How a training will run, decided before it starts (logged as MLflow params)."""

    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16
    processes: int  # data-parallel processes (1: no torchrun)
    backend: str  # nccl | gloo | none

    @property
    def gpu_slots(self) -> int:
        """Slots of the GPU pool's concurrency limit to hold: one per GPU trained on (and
        one for a CPU training that landed on a GPU pool)."""
        return self.processes if self.device == "cuda" else 1

    def params(self) -> dict[str, str]:
        """The plan as MLflow params."""
        return {
            "device": self.device,
            "precision": self.precision,
            "processes": str(self.processes),
            "ddp_backend": self.backend,
        }


def check_gpu_count(gpus: int, available: int) -> None:
    """Refuse to start ``gpus`` GPU processes where only ``available`` GPUs are visible."""
    if gpus > available:
        raise TrainingError(
            f"{gpus} GPUs were asked for but only {available} CUDA device"
            f"{'' if available == 1 else 's'} {'is' if available == 1 else 'are'} "
            "visible: lower gpus or request more GPUs from the work pool"
        )


def plan_training(
    device: str, gpus: int, mixed_precision: bool, *, cuda_devices: int | None = None
) -> TrainingPlan:
    """Resolve ``device``, the precision and the process count; fail early and clearly.

    ``cuda_devices`` defaults to ``torch.cuda.device_count()`` (given in tests)."""
    if gpus < 1:
        raise TrainingError(f"gpus must be ≥ 1 (got {gpus})")
    resolved = pick_device(device)
    if resolved.type == "cuda":
        check_gpu_count(gpus, torch.cuda.device_count() if cuda_devices is None else cuda_devices)
        amp_dtype = pick_precision(torch.device("cuda", 0), mixed_precision)
    else:
        amp_dtype = None
    backend = "none" if gpus == 1 else ("nccl" if resolved.type == "cuda" else "gloo")
    return TrainingPlan(resolved.type, precision_name(amp_dtype), gpus, backend)
