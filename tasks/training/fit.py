from __future__ import annotations

from typing import cast
from uuid import UUID

from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from mlops.artifacts import artifact_key
from mlops.specs import ModelSpec
from mlops.training.data import TimeSplits
from mlops.training.loop import train
from mlops.training.model import MLPClassifier, TrainConfig


@task(cache_policy=NO_CACHE)
def fit_model(
    client: MlflowClient, run_id: str, spec: ModelSpec, cfg: TrainConfig, splits: TimeSplits
) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """Train the MLP; each epoch's metrics go to MLflow and to a Prefect progress artifact."""
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

    return train(
        splits.train.x,
        splits.train.y,
        splits.validation.x,
        splits.validation.y,
        cfg,
        feature_names=spec.feature_names,
        on_epoch=on_epoch,
    )
