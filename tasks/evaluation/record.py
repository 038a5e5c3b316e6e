from __future__ import annotations

from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from mlops.artifacts import artifact_key
from mlops.gates import GateDecision
from mlops.registry import set_tags
from tasks.evaluation.retry import MLFLOW_RETRIES


@task(cache_policy=NO_CACHE, **MLFLOW_RETRIES)
def record_decision(
    client: MlflowClient,
    name: str,
    version: str,
    decision: GateDecision,
    table: list[dict[str, object]],
) -> None:
    """The decision and its reason as version tags and a Prefect table artifact
    (one row per model, or per fold in a walk-forward evaluation)."""
    set_tags(client, name=name, version=version, tags=decision.tags())
    create_table_artifact(
        table,
        key=artifact_key("evaluate", name),
        description=f"{name} v{version}: {'PROMOTED' if decision.promote else 'REJECTED'}"
        f" — {decision.reason}",
    )
