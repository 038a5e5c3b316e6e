from __future__ import annotations

import torch
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.training.data import TimeSplits
from mlops.training.loop import predict_proba
from mlops.training.metrics import classification_metrics
from mlops.training.model import MLPClassifier
from mlops.training.plots import calibration_plot, confusion_plot, loss_curve


@task(cache_policy=NO_CACHE, retries=1)
def score_holdout(
    client: MlflowClient,
    run_id: str,
    model: MLPClassifier,
    history: list[dict[str, float]],
    splits: TimeSplits,
) -> dict[str, float]:
    """Final metrics on the holdout, logged with the loss, calibration and confusion plots."""
    y = splits.holdout.y
    p = predict_proba(model, splits.holdout.x, torch.device("cpu"))
    metrics = classification_metrics(y, p)
    for key, value in metrics.items():
        client.log_metric(run_id, f"holdout_{key}", value)
    for name, fig in (
        ("loss_curve.png", loss_curve(history)),
        ("calibration.png", calibration_plot(y, p)),
        ("confusion_matrix.png", confusion_plot(y, p)),
    ):
        client.log_figure(run_id, fig, f"plots/{name}")
    return metrics
