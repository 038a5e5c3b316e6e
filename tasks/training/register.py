from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.onnx_export import onnx_session, sha256_bytes
from mlops.registry import CHALLENGER, Tags, mlflow_uris, set_tags
from mlops.settings import Settings
from mlops.specs import ModelSpec
from mlops.training.data import TimeSplits

HOLDOUT_ARTIFACT = "holdout/holdout.parquet"


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def register_model(
    client: MlflowClient,
    run_id: str,
    spec: ModelSpec,
    proto: onnx.ModelProto,
    splits: TimeSplits,
    tags: dict[str, str],
    settings: Settings,
) -> str:
    """Log the ONNX model and the holdout to the run, register a version of
    ``spec.name`` with the contract tags and point ``challenger`` at it."""
    example = splits.holdout.x[:5]
    probabilities = onnx_session(proto).run(None, {"features": example})[0]
    signature = infer_signature(
        np.asarray(example, dtype=np.float32), np.asarray(probabilities, dtype=np.float32)
    )
    with tempfile.TemporaryDirectory() as tmp:
        holdout_cols = [spec.entity, spec.timestamp, *spec.feature_names, spec.label]
        holdout_path = Path(tmp) / "holdout.parquet"
        splits.holdout.frame[holdout_cols].to_parquet(holdout_path, index=False)
        client.log_artifact(run_id, str(holdout_path), artifact_path="holdout")
        with (
            mlflow_uris(settings.tracking_uri, settings.registry_uri),
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None),
        ):
            info = mlflow.onnx.log_model(
                proto,
                name="model",
                signature=signature,
                input_example=example,
                save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"],
            )
            version = mlflow.register_model(info.model_uri, spec.name)
            # the sha256 of the file as stored, which is what serving will hash
            stored = mlflow.artifacts.download_artifacts(
                artifact_uri=info.model_uri, dst_path=str(Path(tmp) / "model")
            )
        sha = sha256_bytes((Path(stored) / "model.onnx").read_bytes())
    contract = {
        Tags.FEATURE_VIEWS: json.dumps([v.ref for v in spec.views]),
        Tags.FEATURE_NAMES: json.dumps(spec.feature_names),
        Tags.ENTITY_KEY: spec.entity,
        Tags.ONNX_SHA256: sha,
    }
    set_tags(client, name=spec.name, version=str(version.version), tags=contract | tags)
    client.set_registered_model_alias(spec.name, CHALLENGER, str(version.version))
    if spec.description:
        client.update_registered_model(spec.name, description=spec.description)
    return str(version.version)
