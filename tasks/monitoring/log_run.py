from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.lifecycle import flow_run_tags
from mlops.monitoring.drift import DriftReport
from mlops.monitoring.judge import Judgement, LiveAccuracy
from mlops.registry import finish_run

REPORT_DIR = "monitoring"
REPORT_NAME = "report.html"
REPORT_ARTIFACT = f"{REPORT_DIR}/{REPORT_NAME}"


@dataclass(frozen=True, slots=True)
class MonitorRunRef:
    run_id: str
    report_uri: str | None
    """The HTML report's MLflow artifact URI (None without a drift report)."""
    link: str
    """Where to look: the run's page in the MLflow UI when there is a tracking server,
    else the report's artifact URI (or the run's artifact folder)."""


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def log_monitoring_run(
    client: MlflowClient,
    experiment_id: str,
    model_name: str,
    model_version: str,
    window_start: datetime,
    window_end: datetime,
    n_rows: int,
    report: DriftReport | None,
    accuracy: LiveAccuracy,
    judgement: Judgement,
) -> MonitorRunRef:
    """An MLflow run ``monitor-<model>-<time>`` in the platform's experiment: the figures as
    metrics, the Evidently report as artifact ``monitoring/report.html``."""
    stamp = window_end.strftime("%Y%m%dT%H%M%SZ")
    run = client.create_run(
        experiment_id,
        run_name=f"monitor-{model_name}-{stamp}",
        tags={
            "mlops.model": model_name,
            "mlops.model_version": model_version,
            "mlops.flow": "monitor",
            **flow_run_tags(),  # mlops.flow_run_id, mlops.root_flow_run_id
            "mlops.events": ",".join(judgement.events),
        },
    )
    run_id = str(run.info.run_id)
    with finish_run(client, run_id):
        for key, text in {
            "window_start": window_start.isoformat(),
            "window_end": window_end.isoformat(),
            "reasons": "; ".join(judgement.reasons),
        }.items():
            client.log_param(run_id, key, text[:6000])
        metrics: dict[str, float] = {"n_rows": n_rows, "n_labelled": accuracy.n_labelled}
        if accuracy.accuracy is not None:
            metrics["live_accuracy"] = accuracy.accuracy
        if report is not None:
            metrics["drift_share"] = report.figures.drift_share
            metrics["n_drifted_features"] = len(report.figures.drifted_features)
            for feature in report.figures.features:
                metrics[f"drift_score.{feature.feature}"] = feature.score
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        report_uri = None
        if report is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = report.save_html(Path(tmp) / REPORT_NAME)
                client.log_artifact(run_id, str(path), artifact_path=REPORT_DIR)
            report_uri = f"{run.info.artifact_uri.rstrip('/')}/{REPORT_ARTIFACT}"
    return MonitorRunRef(
        run_id=run_id,
        report_uri=report_uri,
        link=_link(client.tracking_uri, experiment_id, run_id)
        or report_uri
        or run.info.artifact_uri,
    )


def _link(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when the tracking URI is a server's."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None
