"""Data-parallel training with torchrun: N processes, one per GPU (NCCL) or CPU (gloo).

:func:`train_distributed` has :func:`mlops.training.loop.train`'s signature and result.
It writes the matrices and the config to a job folder, launches::

    python -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=N \\
        -m mlops.training.distributed --job DIR

and waits. Each worker (:func:`main`) joins the process group and runs the same loop on
its shard of every epoch; rank 0 appends each epoch's record to ``history.jsonl`` (read
live here, so ``on_epoch`` fires during training) and finally writes the state dict to
``model.pt``, which is loaded back into an :class:`MLPClassifier` on the CPU. A worker's
exception is written to ``error-rank<R>.json`` and raised here as a :class:`TrainingError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mlops.errors import TrainingError
from mlops.processes import terminate
from mlops.training.device import pick_device
from mlops.training.loop import EpochCallback
from mlops.training.model import MLPClassifier, Preprocess, TrainConfig

logger = logging.getLogger(__name__)

WORKER_MODULE = "mlops.training.distributed"
DATA_FILE = "data.npz"
CONFIG_FILE = "job.json"
HISTORY_FILE = "history.jsonl"
MODEL_FILE = "model.pt"
LOG_FILE = "torchrun.log"
DONE_FILE = "done"
"""Written by rank 0 once every rank has trained and the model is saved (after a barrier)."""


def torchrun_command(nproc: int, job_dir: Path, python: str | None = None) -> list[str]:
    """The torchrun command line that trains the job in ``job_dir`` on ``nproc`` processes.

    ``--standalone``: one node, a rendezvous on a free local port (several trainings
    can run side by side)."""
    if nproc < 1:
        raise TrainingError(f"the number of processes must be ≥ 1 (got {nproc})")
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "-m",
        WORKER_MODULE,
        "--job",
        str(job_dir),
    ]


def train_distributed(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    feature_names: list[str],
    on_epoch: EpochCallback | None = None,
    poll_seconds: float = 0.2,
) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """Train on ``cfg.gpus`` data-parallel processes; returns the model (CPU, eval mode)
    and rank 0's per-epoch history, like :func:`mlops.training.loop.train`."""
    with tempfile.TemporaryDirectory(prefix="mlops-ddp-") as tmp:
        job = Path(tmp)
        np.savez(job / DATA_FILE, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
        (job / CONFIG_FILE).write_text(
            json.dumps({"config": asdict(cfg), "feature_names": list(feature_names)})
        )
        env = dict(os.environ)
        # torchrun would set 1 thread a worker (and warn); share the cores out instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.gpus)))
        command = torchrun_command(cfg.gpus, job)
        logger.info("launching %d data-parallel processes: %s", cfg.gpus, " ".join(command))
        history: list[dict[str, float]] = []
        with open(job / LOG_FILE, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                offset = 0
                while True:
                    done = proc.poll() is not None
                    offset = _read_history(job / HISTORY_FILE, offset, history, on_epoch)
                    if done:
                        break
                    time.sleep(poll_seconds)
            finally:
                terminate(proc, timeout_s=30)  # still running: interrupted (cancel, Ctrl-C)
        if proc.returncode != 0:
            if not _finished(job):
                raise _worker_failure(job, proc.returncode)
            # every rank passed the final barrier and the model is saved: what failed is
            # the process group's teardown, which changes nothing in the result
            logger.warning(
                "torchrun exited with code %d after every rank finished training and the "
                "model was saved (a process-group teardown failure); using the model",
                proc.returncode,
            )
        state = torch.load(job / MODEL_FILE, map_location="cpu", weights_only=True)
    preprocess = Preprocess(
        state["preprocess.log_mask"].numpy(),
        state["preprocess.mean"].numpy(),
        state["preprocess.std"].numpy(),
    )
    model = MLPClassifier(preprocess, x_train.shape[1], cfg)
    model.load_state_dict(state)
    return model.eval(), history


def _read_history(
    path: Path,
    offset: int,
    history: list[dict[str, float]],
    on_epoch: EpochCallback | None,
) -> int:
    """Hand each complete new line of ``path`` (from byte ``offset``) to ``on_epoch``."""
    if not path.exists():
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.splitlines():
        record = {k: float(v) for k, v in json.loads(line).items()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return offset + len(complete)


def _finished(job: Path) -> bool:
    """Every rank trained to the end and rank 0 saved the model; no rank reported an error."""
    return (
        (job / DONE_FILE).exists()
        and (job / MODEL_FILE).exists()
        and not any(job.glob("error-rank*.json"))
    )


def _worker_failure(job: Path, returncode: int) -> TrainingError:
    """The error of the first failed rank, or torchrun's own output when none wrote one."""
    errors = [json.loads(p.read_text()) for p in sorted(job.glob("error-rank*.json"))]
    errors.sort(key=lambda e: (e["type"] != "TrainingError", e["rank"]))
    if errors:
        error = errors[0]
        if error["type"] == "TrainingError":
            return TrainingError(error["message"])
        return TrainingError(
            f"data-parallel training failed on rank {error['rank']}: "
            f"{error['type']}: {error['message']}"
        )
    tail = (job / LOG_FILE).read_text(errors="replace")[-3000:]
    return TrainingError(f"torchrun exited with code {returncode} before training ended:\n{tail}")


# --- the worker (one per rank, started by torchrun) -----------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """A torchrun worker: join the process group, train this rank's shards, rank 0 saves."""
    import torch.distributed as dist

    from mlops.training.loop import train

    parser = argparse.ArgumentParser(description="one rank of a data-parallel training")
    parser.add_argument("--job", type=Path, required=True, help="the job folder to train")
    job: Path = parser.parse_args(argv).job
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(name)s %(message)s"
    )
    try:
        spec = json.loads((job / CONFIG_FILE).read_text())
        values = spec["config"]
        cfg = TrainConfig(
            **values
            | {"hidden": tuple(values["hidden"]), "log_features": tuple(values["log_features"])}
        )
        device = pick_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        data = np.load(job / DATA_FILE)
        history_file = open(job / HISTORY_FILE, "a")  # noqa: SIM115 (closed below)

        def write_epoch(record: dict[str, float]) -> None:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()

        try:
            model, _ = train(
                data["x_train"],
                data["y_train"],
                data["x_val"],
                data["y_val"],
                cfg,
                feature_names=spec["feature_names"],
                on_epoch=write_epoch,
                device=device,
            )
        finally:
            history_file.close()
        if rank == 0:
            partial = job / f"{MODEL_FILE}.partial"
            torch.save(model.state_dict(), partial)
            partial.replace(job / MODEL_FILE)
        # Every rank tears the group down together: a rank that destroys its gloo context
        # while a peer's last collective is still in flight can abort (SIGABRT,
        # "terminate called without an active exception"), failing a finished training.
        dist.barrier()
        if rank == 0:
            (job / DONE_FILE).write_text("ok\n")
    except BaseException as exc:
        (job / f"error-rank{rank}.json").write_text(
            json.dumps({"rank": rank, "type": type(exc).__name__, "message": str(exc)})
        )
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
