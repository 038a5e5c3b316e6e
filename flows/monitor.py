"""Monitor the champion: request-log window vs training reference → figures → events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from mlops import events
from mlops.lifecycle import on_flow_crashed
from mlops.monitoring.history import MonitoringRun
from mlops.monitoring.judge import Thresholds, event_payload, judge, live_accuracy
from mlops.registry import configure_mlflow, mlflow_client
from mlops.serving.request_log import RequestLog
from mlops.settings import Settings
from tasks.evaluation.load_holdout import load_holdout
from tasks.monitoring.champion import champion_version
from tasks.monitoring.drift import run_drift_report
from tasks.monitoring.log_run import log_monitoring_run
from tasks.monitoring.publish import publish_artifacts
from tasks.monitoring.read_window import read_window
from tasks.monitoring.record import record_history
from tasks.monitoring.reference import select_reference

T = TypeVar("T")


@flow(
    name="monitor",
    log_prints=False,
    on_crashed=[on_flow_crashed],
    on_cancellation=[on_flow_crashed],
)
def monitor(
    model_name: str = "fraud_detector",
    window_hours: float | None = None,
    drift_share_threshold: float | None = None,
    min_live_accuracy: float | None = None,
    min_rows: int | None = None,
) -> dict[str, Any]:
    """Compare the last ``window_hours`` of the champion's predictions with the data it was
    trained against, and emit an event when a threshold is crossed.

    The window holds the predictions of the **champion's version only**: the reference
    (that version's training holdout) and the logged feature columns (its
    ``feature_names``) belong to one version, and the live accuracy judges the model now
    served; predictions of an earlier champion would blame it for its predecessor.

    Drift (Evidently's drift and data-summary presets) is judged on at least ``min_rows``
    rows: a drift share ≥ ``drift_share_threshold`` emits ``mlops.model.drift-detected``.
    Live accuracy (logged predicted label vs feedback label) below ``min_live_accuracy``
    emits ``mlops.model.performance-degraded``. The figures go to an MLflow run (the HTML
    report as ``monitoring/report.html``), Prefect artifacts and the ``monitoring_runs``
    table. Every parameter left None takes ``Settings().monitoring``'s value.
    """
    logger = get_run_logger()
    settings = Settings()
    defaults = settings.monitoring
    thresholds = Thresholds(
        drift_share_threshold=_or(drift_share_threshold, defaults.drift_share_threshold),
        min_live_accuracy=_or(min_live_accuracy, defaults.min_live_accuracy),
        min_rows=_or(min_rows, defaults.min_rows),
    )
    hours = _or(window_hours, defaults.window_hours)
    if hours <= 0:
        raise ValueError(f"window_hours must be positive, not {hours}")
    settings.ensure_home()
    experiment_id = configure_mlflow(settings)
    client = mlflow_client(settings)
    request_log = RequestLog(settings.request_log)
    window_end = datetime.now(UTC)
    window_start = window_end - timedelta(hours=hours)
    window = f"{window_start.isoformat()}/{window_end.isoformat()}"

    champion = champion_version(client, model_name)
    current: pd.DataFrame = read_window(
        request_log, model_name, champion.version, champion.feature_names, window_start, window_end
    )
    n_rows = len(current)
    accuracy = live_accuracy(current)
    report = None
    if n_rows >= thresholds.min_rows:
        holdout: pd.DataFrame = load_holdout(client, model_name, champion.version)
        reference: pd.DataFrame = select_reference(
            holdout, champion.feature_names, defaults.reference_rows
        )
        report = run_drift_report(
            reference, current, champion.feature_names, thresholds.drift_share_threshold
        )
    figures = None if report is None else report.figures
    judgement = judge(
        n_rows=n_rows,
        drift_share=None if figures is None else figures.drift_share,
        accuracy=accuracy,
        thresholds=thresholds,
    )
    run = log_monitoring_run(
        client,
        experiment_id,
        model_name,
        champion.version,
        window_start,
        window_end,
        n_rows,
        report,
        accuracy,
        judgement,
    )
    publish_artifacts(
        model_name,
        champion.version,
        window,
        n_rows,
        figures,
        accuracy,
        thresholds,
        judgement,
        run.link,
    )
    drifted = [] if figures is None else figures.drifted_features
    assert settings.request_log.url is not None  # filled by Settings
    history_id = record_history(
        settings.request_log.url,
        MonitoringRun(
            model_name=model_name,
            model_version=champion.version,
            window_start=window_start,
            window_end=window_end,
            n_rows=n_rows,
            drift_share=None if figures is None else figures.drift_share,
            drifted_features=drifted,
            per_feature={} if figures is None else figures.per_feature(),
            live_accuracy=accuracy.accuracy,
            n_labelled=accuracy.n_labelled,
            report_uri=run.report_uri,
            flow_run_id=str(flow_run.get_id() or "") or None,
        ),
    )
    payload = event_payload(
        model_version=champion.version,
        window_start=window_start.isoformat(),
        window_end=window_end.isoformat(),
        n_rows=n_rows,
        drift_share=None if figures is None else figures.drift_share,
        drifted_features=drifted,
        accuracy=accuracy,
        thresholds=thresholds,
        report_uri=run.report_uri,
    )
    for name in judgement.events:
        events.emit(name, events.model_resource(model_name), payload)
    for reason in judgement.reasons:
        logger.info("%s v%s: %s", model_name, champion.version, reason)
    return {
        "model_name": model_name,
        "model_version": champion.version,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "n_rows": n_rows,
        "drift_judged": judgement.drift_judged,
        "drift_share": None if figures is None else figures.drift_share,
        "drifted_features": drifted,
        "per_feature": {} if figures is None else figures.per_feature(),
        "live_accuracy": accuracy.accuracy,
        "n_labelled": accuracy.n_labelled,
        "thresholds": {
            "drift_share_threshold": thresholds.drift_share_threshold,
            "min_live_accuracy": thresholds.min_live_accuracy,
            "min_rows": thresholds.min_rows,
        },
        "reasons": judgement.reasons,
        "report_uri": run.report_uri,
        "mlflow_run_id": run.run_id,
        "history_id": history_id,
        "events": judgement.events,
    }


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
