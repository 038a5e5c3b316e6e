"""Evaluate the challenger against the champion on the same holdout; promote through gates."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from mlops import events
from mlops.errors import RegistryError
from mlops.gates import decide
from mlops.registry import (
    CHALLENGER,
    CHAMPION,
    configure_mlflow,
    mlflow_client,
    version_by_alias,
)
from mlops.settings import Settings
from mlops.specs import get_spec
from tasks.evaluation.load_holdout import load_holdout
from tasks.evaluation.promote import promote_version
from tasks.evaluation.record import record_decision
from tasks.evaluation.score import score_alias


@flow(name="evaluate", log_prints=False)
def evaluate(
    model_name: str = "fraud_detector",
    min_roc_auc: float = 0.75,
    max_regression: float = 0.01,
) -> dict[str, Any]:
    """Score ``challenger`` and ``champion`` of ``model_name`` on the challenger's holdout;
    promote the challenger when there is no champion or it passes the gates
    (ROC AUC ≥ ``min_roc_auc``, at most ``max_regression`` below the champion)."""
    logger = get_run_logger()
    settings = Settings()
    spec = get_spec(model_name, settings)
    configure_mlflow(settings)
    client = mlflow_client(settings)
    cache = settings.home / "model-cache"

    challenger = version_by_alias(client, spec.name, CHALLENGER)
    if challenger is None:
        raise RegistryError(
            f"model {spec.name!r} has no {CHALLENGER!r} version to evaluate: run the train flow"
        )
    holdout = load_holdout(client, spec.name, str(challenger.version))
    version, challenger_metrics = score_alias(
        client, spec.name, CHALLENGER, holdout, spec.label, cache
    )
    champion_version, champion_metrics = None, None
    if version_by_alias(client, spec.name, CHAMPION) is not None:
        champion_version, champion_metrics = score_alias(
            client, spec.name, CHAMPION, holdout, spec.label, cache
        )
    decision = decide(
        challenger_roc_auc=challenger_metrics["roc_auc"],
        champion_roc_auc=None if champion_metrics is None else champion_metrics["roc_auc"],
        min_roc_auc=min_roc_auc,
        max_regression=max_regression,
    )
    if decision.promote:
        promote_version(client, spec.name, version)
    table: list[dict[str, object]] = [
        {"role": "challenger", "version": version, **challenger_metrics},
    ]
    if champion_metrics is not None:
        table.append({"role": "champion", "version": champion_version, **champion_metrics})
    record_decision(client, spec.name, version, decision, table)
    result: dict[str, Any] = {
        "model": spec.name,
        "challenger_version": version,
        "champion_version_before": champion_version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "challenger_metrics": challenger_metrics,
        "champion_metrics": champion_metrics,
    }
    if decision.promote:
        events.emit(
            events.MODEL_PROMOTED,
            events.model_resource(spec.name),
            {"version": version, "previous": champion_version, "reason": decision.reason},
        )
    logger.info("%s v%s: %s", spec.name, version, decision.reason)
    return result
