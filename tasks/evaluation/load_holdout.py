from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.errors import RegistryError
from tasks.evaluation.retry import MLFLOW_RETRIES
from tasks.training.register import HOLDOUT_ARTIFACT


@task(cache_policy=NO_CACHE, **MLFLOW_RETRIES)
def load_holdout(client: MlflowClient, name: str, version: str) -> pd.DataFrame:
    """The holdout rows that ``name`` version ``version`` was trained against: the newest
    labelled window of its training data, which neither training nor early stopping saw."""
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        raise RegistryError(f"model {name!r} version {version} has no training run")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path=HOLDOUT_ARTIFACT,
                dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
        except Exception as exc:
            raise RegistryError(
                f"run {mv.run_id} of {name!r} v{version} has no {HOLDOUT_ARTIFACT}: {exc}"
            ) from exc
        return pd.read_parquet(Path(path))
