"""Where a training runs: device and precision selection, the torchrun command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mlops.errors import TrainingError
from mlops.training.device import (
    TrainingPlan,
    check_gpu_count,
    pick_device,
    pick_precision,
    plan_training,
    precision_name,
)
from mlops.training.distributed import WORKER_MODULE, torchrun_command
from mlops.training.model import TrainConfig

HAS_CUDA = torch.cuda.is_available()


def test_auto_picks_cuda_only_when_present() -> None:
    assert pick_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_explicit_cuda_without_cuda_names_the_problem() -> None:
    if HAS_CUDA:  # a GPU machine: the request is honoured
        assert plan_training("cuda", 1, True).device == "cuda"
        return
    with pytest.raises(TrainingError, match="device 'cuda' was asked for but no CUDA device"):
        pick_device("cuda")
    with pytest.raises(TrainingError, match="no CUDA device"):
        plan_training("cuda", 1, True)


def test_mixed_precision_only_on_cuda_and_when_enabled() -> None:
    cpu = torch.device("cpu")
    assert pick_precision(cpu, mixed_precision=True) is None
    assert pick_precision(cpu, mixed_precision=False) is None
    assert pick_precision(torch.device("cuda", 0), mixed_precision=False) is None
    assert precision_name(None) == "fp32"
    assert precision_name(torch.bfloat16) == "bf16"
    assert precision_name(torch.float16) == "fp16"


def test_plan_on_cpu() -> None:
    plan = plan_training("cpu", 1, True)
    assert (plan.device, plan.precision, plan.processes, plan.backend) == ("cpu", "fp32", 1, "none")
    parallel = plan_training("cpu", 3, True)
    assert (parallel.processes, parallel.backend, parallel.precision) == (3, "gloo", "fp32")
    assert parallel.params() == {
        "device": "cpu",
        "precision": "fp32",
        "processes": "3",
        "ddp_backend": "gloo",
    }
    assert parallel.gpu_slots == 1  # CPU processes hold one slot of a GPU pool, not 3
    assert TrainingPlan("cuda", "bf16", 4, "nccl").gpu_slots == 4
    auto = plan_training("auto", 1, True)
    assert auto.device == ("cuda" if HAS_CUDA else "cpu")


def test_more_gpus_than_visible_is_refused_naming_both_numbers() -> None:
    with pytest.raises(TrainingError, match="4 GPUs were asked for but only 2 CUDA devices are"):
        check_gpu_count(4, 2)
    with pytest.raises(TrainingError, match="2 GPUs were asked for but only 1 CUDA device is"):
        check_gpu_count(2, 1)
    with pytest.raises(TrainingError, match="only 0 CUDA devices"):
        check_gpu_count(1, 0)
    check_gpu_count(2, 2)  # enough: no error
    if HAS_CUDA:
        with pytest.raises(TrainingError, match="GPUs were asked for"):
            plan_training("cuda", 64, True, cuda_devices=torch.cuda.device_count())


def test_invalid_gpus_are_refused() -> None:
    with pytest.raises(TrainingError, match=r"gpus must be ≥ 1 \(got 0\)"):
        plan_training("cpu", 0, True)
    with pytest.raises(TrainingError, match=r"gpus must be ≥ 1 \(got -1\)"):
        TrainConfig(gpus=-1)


def test_torchrun_command_for_n_processes(tmp_path: Path) -> None:
    command = torchrun_command(4, tmp_path)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command
    assert "--standalone" in command
    # the worker module comes after torchrun's own options, then the job folder
    assert command[-4:] == ["-m", WORKER_MODULE, "--job", str(tmp_path)]
    assert torchrun_command(2, tmp_path, python="/opt/py")[0] == "/opt/py"
    with pytest.raises(TrainingError, match="must be ≥ 1"):
        torchrun_command(0, tmp_path)
