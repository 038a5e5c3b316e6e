"""Evaluate the challenger against the champion on the same holdout, whole or in
walk-forward time folds; promote through the gates."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.transactions import transaction

from mlops import events
from mlops.errors import RegistryError
from mlops.evaluation.walk_forward import fold_table, time_folds
from mlops.gates import decide_folds
from mlops.lifecycle import on_flow_crashed
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
from tasks.evaluation.score import score_folds


@flow(
    name="evaluate",
    log_prints=False,
    on_crashed=[on_flow_crashed],
    on_cancellation=[on_flow_crashed],
)
def evaluate(
    model_name: str = "fraud_detector",
    min_roc_auc: float = 0.75,
    max_regression: float = 0.01,
    folds: int = 1,
) -> dict[str, Any]:
    """Score ``challenger`` and ``champion`` of ``model_name`` on the challenger's holdout
    (the newest labelled window of its training data) cut into ``folds`` consecutive
    time folds; promote the challenger when there is no champion or it passes the gates.

    ``folds=1`` scores the whole holdout once: promoted when its ROC AUC is at least
    ``min_roc_auc`` and at most ``max_regression`` below the champion's. With more folds
    the means over the folds must pass the same two gates and the challenger must not be
    more than ``max_regression`` below the champion on a majority of folds (see
    :func:`mlops.gates.decide_folds`). Moving the alias and recording the decision are
    one transaction: if recording fails, the champion alias is put back.
    """
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
    window = time_folds(holdout, timestamp=spec.timestamp, folds=folds)
    version, challenger_metrics, challenger_folds = score_folds(
        client, spec.name, CHALLENGER, window, spec.label, cache
    )
    champion_version, champion_metrics, champion_folds = None, None, None
    if version_by_alias(client, spec.name, CHAMPION) is not None:
        champion_version, champion_metrics, champion_folds = score_folds(
            client, spec.name, CHAMPION, window, spec.label, cache
        )
    decision = decide_folds(
        challenger_roc_auc=[m["roc_auc"] for m in challenger_folds],
        champion_roc_auc=None if champion_folds is None else [m["roc_auc"] for m in champion_folds],
        min_roc_auc=min_roc_auc,
        max_regression=max_regression,
    )
    table = fold_table(window, challenger_folds, champion_folds, spec.label)
    with transaction():
        if decision.promote:
            promote_version(client, spec.name, version, decision.reason)
        record_decision(client, spec.name, version, decision, table)
    result: dict[str, Any] = {
        "model": spec.name,
        "challenger_version": version,
        "champion_version_before": champion_version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "challenger_metrics": challenger_metrics,
        "champion_metrics": champion_metrics,
        "window": f"{window[0].start.isoformat()}/{window[-1].end.isoformat()}",
        "folds": table,
    }
    if decision.promote:
        events.emit(
            events.MODEL_PROMOTED,
            events.model_resource(spec.name),
            {
                "version": version,
                "previous": champion_version,
                "reason": decision.reason,
                "folds": folds,
            },
        )
    logger.info("%s v%s: %s", spec.name, version, decision.reason)
    return result
