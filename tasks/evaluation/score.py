from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.errors import SchemaError
from mlops.evaluation.walk_forward import Fold, fold_metrics
from mlops.serving.runtime import load_model
from mlops.training.metrics import classification_metrics


@task(cache_policy=NO_CACHE, retries=1)
def score_folds(
    client: MlflowClient,
    name: str,
    alias: str,
    folds: list[Fold],
    label: str,
    cache_dir: Path,
) -> tuple[str, dict[str, float], list[dict[str, float]]]:
    """Load ``name@alias`` as served (sha256 checked) and score it on the whole window
    and on each time fold; returns (version, window metrics, per-fold metrics)."""
    model = load_model(client=client, name=name, alias=alias, cache_dir=cache_dir)
    rows = pd.concat([f.frame for f in folds], ignore_index=True)
    missing = [f for f in model.feature_names if f not in rows.columns]
    if missing:
        raise SchemaError(
            f"{name} v{model.version} needs feature(s) {', '.join(missing)} "
            "that the holdout does not have"
        )
    p = model.predict(rows[list(model.feature_names)].to_numpy(dtype="float32"))[:, 1]
    overall = classification_metrics(rows[label].to_numpy(), p)
    return model.version, overall, fold_metrics(folds, label, p)
