from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from mlops.artifacts import artifact_key
from mlops.evaluation.report import decision_markdown, trigger_markdown
from mlops.registry import set_tags
from tasks.evaluation.retry import MLFLOW_RETRIES


@task(cache_policy=NO_CACHE)
def report_trigger(name: str, reason: str, payload: dict[str, Any] | None) -> None:
    """A markdown artifact saying why the retraining of ``name`` runs."""
    create_markdown_artifact(
        trigger_markdown(name, reason, payload),
        key=artifact_key("retrain", name, "trigger"),
        description=f"Why {name} is being retrained: {reason}",
    )


@task(cache_policy=NO_CACHE, **MLFLOW_RETRIES)
def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on ``name`` version ``version``."""
    set_tags(client, name=name, version=version, tags=tags)


@task(cache_policy=NO_CACHE)
def report_decision(
    name: str,
    reason: str,
    evaluated: dict[str, Any],
    champion_after: str | None,
    model_url: str | None,
) -> None:
    """The per-fold metrics of challenger and champion as a table artifact, the decision
    in words as a markdown artifact, and a link to the version in MLflow's UI if any."""
    version = str(evaluated["challenger_version"])
    verdict = "PROMOTED" if evaluated["promoted"] else "NOT PROMOTED"
    create_table_artifact(
        evaluated["folds"],
        key=artifact_key("retrain", name, "folds"),
        description=f"{name} v{version} vs champion per time fold: {verdict}",
    )
    create_markdown_artifact(
        decision_markdown(
            model=name,
            reason=reason,
            challenger_version=version,
            champion_before=evaluated["champion_version_before"],
            champion_after=champion_after,
            promoted=evaluated["promoted"],
            gate_reason=evaluated["reason"],
            folds=evaluated["folds"],
        ),
        key=artifact_key("retrain", name, "decision"),
        description=f"{name} v{version}: {verdict} — {evaluated['reason']}",
    )
    if model_url:
        create_link_artifact(
            model_url,
            link_text=f"{name} version {version} in MLflow",
            key=artifact_key("retrain", name, "model"),
        )
