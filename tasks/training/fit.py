from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast
from uuid import UUID

from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from mlops.artifacts import artifact_key
from mlops.specs import ModelSpec
from mlops.training.data import TimeSplits
from mlops.training.device import TrainingPlan
from mlops.training.distributed import train_distributed
from mlops.training.loop import train
from mlops.training.model import MLPClassifier, TrainConfig


def gpu_limit_name(pool: str) -> str:
    """The global concurrency limit that guards the GPUs of work pool ``pool``."""
    return f"gpu:{pool}"


@contextmanager
def gpu_slot(pool: str | None, gpus: int = 1) -> Iterator[None]:
    """Hold ``gpus`` slots of the global concurrency limit ``gpu:<pool>`` (one slot per
    GPU of the pool) while the block runs, waiting for them to free up first; nothing to
    hold when no GPU pool is set.

    A missing or inactive limit does not block (Prefect skips it): it is logged as a
    warning that says how to create it, since trainings may then share a GPU."""
    if pool is None:
        yield
        return
    logger = get_run_logger()
    name = gpu_limit_name(pool)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
    if limit is None or not limit.active:
        logger.warning(
            "the global concurrency limit %r %s: this training does not wait for a free GPU "
            "and may share one; create it with `prefect gcl create %s --limit <GPUs in the "
            "pool>` (registering the deployments does)",
            name,
            "does not exist" if limit is None else "is inactive",
            name,
        )
    else:
        logger.info("waiting for %d slot(s) of %r (limit %d)", gpus, name, limit.limit)
    asked = time.monotonic()
    with concurrency(name, occupy=gpus):
        logger.info(
            "holding %d slot(s) of %r (waited %.1f s)", gpus, name, time.monotonic() - asked
        )
        yield


@task(cache_policy=NO_CACHE)
def fit_model(
    client: MlflowClient,
    run_id: str,
    spec: ModelSpec,
    cfg: TrainConfig,
    splits: TimeSplits,
    plan: TrainingPlan,
) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """Train the MLP as ``plan`` says (one process, or ``plan.processes`` data-parallel
    ones through torchrun); each epoch's metrics go to MLflow and to a Prefect progress
    artifact as the epoch ends."""
    progress = cast(
        UUID,
        create_progress_artifact(
            0.0, key=artifact_key("train", spec.name, "progress"), description="training epochs"
        ),
    )

    def on_epoch(record: dict[str, float]) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch":
                client.log_metric(run_id, key, value, step=step)
        update_progress_artifact(
            progress,
            100.0 * step / cfg.epochs,
            description=f"epoch {step}/{cfg.epochs}: val ROC AUC {record['val_roc_auc']:.4f}",
        )

    fit = train if plan.processes == 1 else train_distributed
    return fit(
        splits.train.x,
        splits.train.y,
        splits.validation.x,
        splits.validation.y,
        cfg,
        feature_names=spec.feature_names,
        on_epoch=on_epoch,
    )
