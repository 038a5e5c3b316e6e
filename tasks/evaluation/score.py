from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.errors import SchemaError
from mlops.serving.runtime import load_model
from mlops.training.metrics import classification_metrics


@task(cache_policy=NO_CACHE, retries=1)
def score_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    holdout: pd.DataFrame,
    label: str,
    cache_dir: Path,
) -> tuple[str, dict[str, float]]:
    """Load ``name@alias`` as served (sha256 checked) and score it on ``holdout``."""
    model = load_model(client=client, name=name, alias=alias, cache_dir=cache_dir)
    missing = [f for f in model.feature_names if f not in holdout.columns]
    if missing:
        raise SchemaError(
            f"{name} v{model.version} needs feature(s) {', '.join(missing)} "
            "that the holdout does not have"
        )
    x = holdout[list(model.feature_names)].to_numpy(dtype="float32")
    p = model.predict(x)[:, 1]
    return model.version, classification_metrics(holdout[label].to_numpy(), p)
