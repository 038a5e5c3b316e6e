"""GPU check: the training loop on CUDA with mixed precision, on 1 GPU and on 2 (torchrun).

Runs the platform's own code paths (``mlops.training.loop.train`` for one process,
``mlops.training.distributed.train_distributed`` for data-parallel ones, NCCL) on a
synthetic, learnable problem and prints, per run: device, precision, processes, mean
seconds per epoch (the first epoch, with CUDA start-up, left out when there are more),
final train loss, validation ROC AUC, and whether the loss fell. Exits non-zero when a
run fails or does not learn. Without CUDA it says so and exits 2 (``--allow-cpu`` runs
the same checks on the CPU, gloo for 2 processes, to try the script itself).

Examples::

    .venv/bin/python benchmarks/gpu_check.py                  # 1 GPU, and 2 if present
    .venv/bin/python benchmarks/gpu_check.py --rows 2000000 --epochs 5
    .venv/bin/python benchmarks/gpu_check.py --no-mixed-precision
    .venv/bin/python benchmarks/gpu_check.py --allow-cpu --rows 20000   # no GPU here
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from mlops.training.device import plan_training
from mlops.training.distributed import train_distributed
from mlops.training.loop import train
from mlops.training.model import TrainConfig


def problem(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy, non-linear binary problem with heavy-tailed columns (like amounts)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    x[:, : features // 4] = np.exp(x[:, : features // 4])  # log-normal, logged in-graph
    score = np.log1p(x[:, 0]) - x[:, 1] * x[:, 2] + 0.5 * np.sin(3 * x[:, 3])
    y = (score + rng.normal(scale=0.5, size=rows) > 0).astype(np.float32)
    return x, y


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="training rows")
    parser.add_argument("--features", type=int, default=32, help="feature columns")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run")
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch size")
    parser.add_argument(
        "--gpus", type=int, nargs="*", default=None, help="process counts to run (default 1 2)"
    )
    parser.add_argument(
        "--no-mixed-precision", action="store_true", help="train in float32 on CUDA too"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA"
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device is visible to torch", torch.__version__, "(--allow-cpu to try)")
        return 2
    device = "cuda" if cuda else "cpu"
    available = torch.cuda.device_count() if cuda else 2
    counts = args.gpus or [n for n in (1, 2) if n <= available]
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(available)]
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {names}")
    x_train, y_train = problem(args.rows, args.features, seed=0)
    x_val, y_val = problem(max(args.rows // 5, 1000), args.features, seed=1)
    names_ = [f"f{i}" for i in range(args.features)]

    failures = 0
    for gpus in counts:
        cfg = TrainConfig(
            hidden=(256, 128),
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=2e-3,
            device=device,
            mixed_precision=not args.no_mixed_precision,
            gpus=gpus,
        )
        plan = plan_training(cfg.device, cfg.gpus, cfg.mixed_precision)
        fit = train if gpus == 1 else train_distributed
        started = time.perf_counter()
        try:
            _, history = fit(x_train, y_train, x_val, y_val, cfg, feature_names=names_)
        except Exception as exc:  # report and go on to the next count
            print(f"{gpus} process(es): FAILED: {type(exc).__name__}: {exc}")
            failures += 1
            continue
        wall = time.perf_counter() - started
        epochs = [r["epoch_seconds"] for r in history]
        per_epoch = float(np.mean(epochs[1:] if len(epochs) > 1 else epochs))
        first, last = history[0]["train_loss"], history[-1]["train_loss"]
        learned = last < first and history[-1]["val_roc_auc"] > 0.75
        failures += not learned
        print(
            f"device={plan.device} precision={plan.precision} processes={plan.processes} "
            f"backend={plan.backend} s/epoch={per_epoch:.3f} wall={wall:.1f}s "
            f"loss {first:.4f} -> {last:.4f} val_roc_auc={history[-1]['val_roc_auc']:.4f} "
            f"{'OK' if learned else 'DID NOT LEARN'}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
