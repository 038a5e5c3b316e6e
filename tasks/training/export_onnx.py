from __future__ import annotations

import onnx
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.onnx_export import export_onnx, parity_check
from mlops.training.data import TimeSplits
from mlops.training.model import MLPClassifier


@task(cache_policy=NO_CACHE)
def export_and_check(
    client: MlflowClient, run_id: str, model: MLPClassifier, splits: TimeSplits
) -> tuple[onnx.ModelProto, float]:
    """Export to ONNX and check it against torch on the whole holdout (max abs diff ≤ 1e-4)."""
    proto = export_onnx(model, splits.holdout.x.shape[1])
    diff = parity_check(model, proto, splits.holdout.x, tolerance=1e-4)
    client.log_metric(run_id, "onnx_parity_max_abs_diff", diff)
    return proto, diff
