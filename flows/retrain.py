"""Retrain a model when the monitor says so or the schedule comes round.

Triggered by ``mlops.model.drift-detected`` / ``mlops.model.performance-degraded``
(the deployment's event trigger passes the event's name and payload) or by the
schedule: materialize what is new in the model's feature views, train a challenger,
evaluate it against the champion over walk-forward time folds, and promote it through
the gates. The evaluate subflow moves the alias and emits ``mlops.model.promoted``,
on which the serving app reloads. Why the run happened and what it decided are Prefect
artifacts of this run and tags of the new model version.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.evaluate import evaluate
from flows.materialize import materialize
from flows.train import train
from mlops.errors import ConfigurationError
from mlops.evaluation.report import TRIGGERS
from mlops.lifecycle import on_flow_crashed
from mlops.registry import (
    CHAMPION,
    Tags,
    configure_mlflow,
    mlflow_client,
    model_version_url,
    version_by_alias,
)
from mlops.settings import Settings
from mlops.specs import get_spec
from tasks.evaluation.report import report_decision, report_trigger, tag_version

TRIGGER_TAG_MAX_CHARS = 5000


@flow(
    name="retrain",
    log_prints=False,
    on_crashed=[on_flow_crashed],
    on_cancellation=[on_flow_crashed],
)
def retrain(
    model_name: str = "fraud_detector",
    reason: str = "schedule",
    event_payload: dict[str, Any] | None = None,
    epochs: int | None = None,
    folds: int = 3,
) -> dict[str, Any]:
    """Materialize (incremental), train a challenger of ``model_name`` (``epochs``: the
    train flow's default when None), evaluate it against the champion over ``folds``
    walk-forward time folds and promote it if it passes the gates.

    ``reason`` is the triggering event's name (``mlops.model.drift-detected``,
    ``mlops.model.performance-degraded``), ``schedule`` or ``manual``; ``event_payload``
    the event's figures and thresholds. Returns the decision, the versions and the
    per-fold metrics.
    """
    logger = get_run_logger()
    if reason not in TRIGGERS:
        raise ConfigurationError(
            f"unknown retrain reason {reason!r}: expected one of {', '.join(TRIGGERS)}"
        )
    if folds < 1:
        raise ConfigurationError(f"folds must be at least 1, got {folds}")
    settings = Settings()
    spec = get_spec(model_name, settings)
    configure_mlflow(settings)
    client = mlflow_client(settings)
    run_id = str(flow_run.get_id() or "")
    logger.info("retraining %s: %s %s", spec.name, reason, event_payload or "")
    report_trigger(spec.name, reason, event_payload)

    materialized = [materialize(view_name=view.name, mode="incremental") for view in spec.views]
    trained = (
        train(model_name=spec.name)
        if epochs is None
        else train(model_name=spec.name, epochs=epochs)
    )
    version = str(trained["version"])
    tag_version(
        client,
        spec.name,
        version,
        {
            Tags.RETRAIN_REASON: reason,
            Tags.RETRAIN_FLOW_RUN_ID: run_id,
            Tags.RETRAIN_TRIGGER: json.dumps(event_payload or {}, default=str)[
                :TRIGGER_TAG_MAX_CHARS
            ],
        },
    )
    evaluated = evaluate(model_name=spec.name, folds=folds)

    champion = version_by_alias(client, spec.name, CHAMPION)
    champion_after = None if champion is None else str(champion.version)
    report_decision(
        spec.name,
        reason,
        evaluated,
        champion_after,
        model_version_url(settings.tracking_uri, spec.name, version),
    )
    result: dict[str, Any] = {
        "model": spec.name,
        "flow_run_id": run_id,
        "reason": reason,
        "event_payload": event_payload,
        "materialized": materialized,
        "challenger_version": version,
        "champion_version_before": evaluated["champion_version_before"],
        "champion_version": champion_after,
        "promoted": evaluated["promoted"],
        "decision": "promoted" if evaluated["promoted"] else "rejected",
        "gate_reason": evaluated["reason"],
        "folds": evaluated["folds"],
    }
    logger.info(
        "retrained %s (%s): v%s %s — %s",
        spec.name,
        reason,
        version,
        result["decision"],
        evaluated["reason"],
    )
    return result
