"""What the console's Models, Experiments, Monitoring and Retraining pages read, as frames.

The pages draw; this module reads. Every function takes its client or engine as an
argument (built by the page from the settings) and returns plain data: pandas frames in
long form for charts, small dataclasses for the rest. Nothing is read at import time.

- **Models**: a model's versions as a table, a version's lineage (the contract tags of
  :class:`~mlops.tags.Tags` and the promotion record of :mod:`mlops.platform.models`),
  two versions side by side, the per-epoch curves of their runs, and the version's
  ``model.onnx`` bytes, checked against its ``onnx_sha256`` tag before they are offered.
- **Experiments**: runs as a table, metric histories of several runs for overlaying.
- **Monitoring**: the ``monitoring_runs`` history as drift-share and per-feature frames,
  the latest monitor run's Evidently report, and request volume, latency and live
  accuracy straight from the request log's tables, bucketed in time.
- **Retraining**: the ``retrain/<model>`` deployments, their event triggers (automations
  related to the deployment) and their recent flow runs with the ``reason`` parameter.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops.errors import MlopsError
from mlops.monitoring.history import MonitoringRun, monitoring_runs
from mlops.platform.models import (
    PROMOTION_AT,
    PROMOTION_BY,
    PROMOTION_KIND,
    PROMOTION_PREVIOUS,
    PROMOTION_REASON,
    VersionInfo,
)
from mlops.platform.runs import RunSummary
from mlops.serving.request_log import prediction_feedback, prediction_log
from mlops.sqldb import as_utc
from mlops.tags import Tags

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

REPORT_ARTIFACT = "monitoring/report.html"
"""Where the monitor flow logs its Evidently report in its MLflow run
(``tasks/monitoring/log_run.py``)."""

MAX_LOG_ROWS = 200_000
"""Newest request-log rows read for one chart: bounds the page's memory and time."""


class ArtifactMismatchError(MlopsError):
    """A downloaded artifact is not the one its model version's tags describe."""


# --- models -----------------------------------------------------------------------------
VERSION_COLUMNS = ["model", "version", "aliases", "created", "status", "data window", "run"]


def versions_frame(versions: Sequence[VersionInfo], metrics: Sequence[str] = ()) -> pd.DataFrame:
    """One row per version: aliases, times, data window, gate decision and ``metrics``
    (the run's last values; blank where a run did not log one)."""
    rows = []
    for v in versions:
        row: dict[str, Any] = {
            "model": v.name,
            "version": int(v.version),
            "aliases": ", ".join(v.aliases),
            "created": v.created,
            "status": v.status,
            "data window": v.data_window or "",
            "gate": v.tags.get(Tags.GATE_DECISION, ""),
            "feature views": ", ".join(v.feature_views),
            "run": v.run_id or "",
        }
        for metric in metrics:
            row[metric] = v.metrics.get(metric)
        rows.append(row)
    columns = [*VERSION_COLUMNS[:6], "gate", "feature views", *metrics, "run"]
    return pd.DataFrame(rows, columns=columns)


def key_metrics(versions: Sequence[VersionInfo], limit: int = 6) -> list[str]:
    """The metrics worth a column: holdout and validation figures first, then the rest,
    at most ``limit`` (the runs log many)."""
    names = sorted({m for v in versions for m in v.metrics})

    def rank(name: str) -> tuple[int, str]:
        for i, prefix in enumerate(("holdout_", "val_", "train_")):
            if name.startswith(prefix):
                return i, name
        return 3, name

    return sorted(names, key=rank)[:limit]


_LINEAGE = [
    ("feature views", Tags.FEATURE_VIEWS),
    ("data window", Tags.DATA_WINDOW),
    ("training flow run", Tags.TRAIN_FLOW_RUN_ID),
    ("git commit", Tags.GIT_SHA),
    ("entity key", Tags.ENTITY_KEY),
    ("ONNX sha256", Tags.ONNX_SHA256),
    ("ONNX parity (max abs diff)", Tags.PARITY_MAX_ABS_DIFF),
    ("retrained because", Tags.RETRAIN_REASON),
    ("retraining flow run", Tags.RETRAIN_FLOW_RUN_ID),
    ("gate decision", Tags.GATE_DECISION),
    ("gate reason", Tags.GATE_REASON),
    ("gate ROC AUC", Tags.GATE_ROC_AUC),
    ("champion ROC AUC at the gate", Tags.GATE_CHAMPION_ROC_AUC),
    ("gate minimum ROC AUC", Tags.GATE_MIN_ROC_AUC),
    ("gate maximum regression", Tags.GATE_MAX_REGRESSION),
    ("gate folds", Tags.GATE_FOLDS),
    ("gate ROC AUC per fold", Tags.GATE_FOLD_ROC_AUC),
    ("champion ROC AUC per fold", Tags.GATE_CHAMPION_FOLD_ROC_AUC),
    ("folds worse than the champion", Tags.GATE_FOLDS_WORSE),
    ("last promotion", PROMOTION_KIND),
    ("promoted by", PROMOTION_BY),
    ("promotion reason", PROMOTION_REASON),
    ("promoted at", PROMOTION_AT),
    ("champion before it", PROMOTION_PREVIOUS),
]


def lineage(version: VersionInfo) -> pd.DataFrame:
    """Where ``version`` came from and what the gates said: ``(what, value, tag)`` rows for
    the contract tags it carries (missing ones are left out), MLflow run first."""
    rows = [("MLflow run", version.run_id or "", "")]
    for label, tag in _LINEAGE:
        value = version.tags.get(tag)
        if value is None or value == "":
            continue
        if tag == Tags.FEATURE_VIEWS:
            value = ", ".join(version.feature_views)
        rows.append((label, str(value), tag))
    return pd.DataFrame(rows, columns=["what", "value", "tag"])


def compare_versions(a: VersionInfo, b: VersionInfo) -> pd.DataFrame:
    """The metrics of two versions' runs side by side, with ``b - a``."""
    names = sorted(set(a.metrics) | set(b.metrics))
    rows = []
    for name in names:
        left, right = a.metrics.get(name), b.metrics.get(name)
        diff = right - left if left is not None and right is not None else None
        rows.append({"metric": name, f"v{a.version}": left, f"v{b.version}": right, "change": diff})
    return pd.DataFrame(rows, columns=["metric", f"v{a.version}", f"v{b.version}", "change"])


def metric_histories(
    client: MlflowClient, runs: dict[str, str], metrics: Iterable[str]
) -> pd.DataFrame:
    """Every logged value of ``metrics`` in each run of ``runs`` (``{label: run_id}``), as
    ``(run, metric, step, value)`` rows: the curves to overlay. A run or metric that is
    gone is skipped."""
    rows: list[tuple[str, str, int, float]] = []
    wanted = list(dict.fromkeys(metrics))
    for label, run_id in runs.items():
        for metric in wanted:
            try:
                history = client.get_metric_history(run_id, metric)
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    continue
                raise
            rows.extend((label, metric, int(m.step), float(m.value)) for m in history)
    frame = pd.DataFrame(rows, columns=["run", "metric", "step", "value"])
    return frame.sort_values(["run", "metric", "step"], ignore_index=True)


def curve_metrics(client: MlflowClient, run_ids: Iterable[str]) -> list[str]:
    """The metrics logged at more than one step in any of ``run_ids`` (per-epoch curves)."""
    found: set[str] = set()
    for run_id in run_ids:
        try:
            metrics = client.get_run(run_id).data.metrics
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                continue
            raise
        for name in metrics:
            if name not in found and len(client.get_metric_history(run_id, name)) > 1:
                found.add(name)
    return sorted(found)


def onnx_bytes(client: MlflowClient, *, name: str, version: str) -> bytes:
    """The ``model.onnx`` of ``name`` version ``version``, checked against its
    ``onnx_sha256`` tag: a file that does not match is :class:`ArtifactMismatchError`, never
    offered for download (the app would refuse it too)."""
    import mlflow.artifacts

    mv = client.get_model_version(name, version)
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="mlops-onnx-") as folder:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=folder, tracking_uri=client.tracking_uri
        )
        path = Path(local)
        files = [path] if path.is_file() else sorted(path.rglob("model.onnx"))
        if not files:
            raise ArtifactMismatchError(
                f"model {name!r} version {version} has no model.onnx in its artifacts "
                f"({source}): it was not logged as ONNX; retrain it with the train flow"
            )
        data = files[0].read_bytes()
    expected = (mv.tags or {}).get(Tags.ONNX_SHA256)
    actual = hashlib.sha256(data).hexdigest()
    if expected and expected != actual:
        raise ArtifactMismatchError(
            f"model.onnx of {name!r} version {version} has sha256 {actual[:12]}…, its "
            f"{Tags.ONNX_SHA256} tag says {expected[:12]}…: the artifact was changed after "
            "registration; do not serve it, retrain or re-register the version"
        )
    return data


# --- experiments ------------------------------------------------------------------------
def runs_frame(runs: Sequence[RunSummary], metrics: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: name, status, start, duration, ``metrics`` (all when empty) and the
    params, with the run id last."""
    names = list(metrics) or sorted({m for r in runs for m in r.metrics})
    params = sorted({p for r in runs for p in r.params})
    rows = []
    for r in runs:
        duration = (
            (r.end_time - r.start_time).total_seconds() if r.start_time and r.end_time else None
        )
        row: dict[str, Any] = {
            "run": r.run_name or r.run_id[:8],
            "status": r.status,
            "started": r.start_time,
            "duration s": duration,
        }
        row.update({m: r.metrics.get(m) for m in names})
        row.update({f"param {p}": r.params.get(p) for p in params})
        row["run id"] = r.run_id
        rows.append(row)
    columns = [
        "run",
        "status",
        "started",
        "duration s",
        *names,
        *(f"param {p}" for p in params),
        "run id",
    ]
    return pd.DataFrame(rows, columns=columns)


def experiment_names(client: MlflowClient) -> list[str]:
    """The active experiments, by name."""
    return sorted(e.name for e in client.search_experiments(max_results=1000))


def mlflow_experiment_url(base: str | None, experiment_id: str) -> str | None:
    """An experiment's page in the MLflow UI at ``base`` (None without a UI)."""
    if not base:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}"


# --- monitoring -------------------------------------------------------------------------
def drift_frame(runs: Sequence[MonitoringRun]) -> pd.DataFrame:
    """The monitor's runs, oldest first: window, rows, drift share, drifted features, live
    accuracy (blank where a window was too small or had no labels)."""
    rows = [
        {
            "time": r.window_end,
            "version": r.model_version,
            "rows": r.n_rows,
            "drift share": r.drift_share,
            "drifted features": len(r.drifted_features),
            "drifted": ", ".join(r.drifted_features),
            "live accuracy": r.live_accuracy,
            "labelled": r.n_labelled,
            "flow run": r.flow_run_id or "",
        }
        for r in sorted(runs, key=lambda r: (r.window_end, r.id or 0))
    ]
    columns = [
        "time",
        "version",
        "rows",
        "drift share",
        "drifted features",
        "drifted",
        "live accuracy",
        "labelled",
        "flow run",
    ]
    return pd.DataFrame(rows, columns=columns)


def feature_drift_frame(runs: Sequence[MonitoringRun]) -> pd.DataFrame:
    """Per-feature drift over time: ``(time, feature, score, threshold, drifted, method)``."""
    rows = []
    for r in sorted(runs, key=lambda r: (r.window_end, r.id or 0)):
        for feature, figures in sorted(r.per_feature.items()):
            rows.append(
                {
                    "time": r.window_end,
                    "feature": feature,
                    "score": _float(figures.get("score")),
                    "threshold": _float(figures.get("threshold")),
                    "drifted": bool(figures.get("drifted", feature in r.drifted_features)),
                    "method": str(figures.get("method", "")),
                }
            )
    return pd.DataFrame(
        rows, columns=["time", "feature", "score", "threshold", "drifted", "method"]
    )


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Report:
    """The Evidently report of one monitor run."""

    run_id: str
    experiment_id: str
    started: datetime | None
    model_version: str | None
    html: str


def latest_report(client: MlflowClient, *, experiment: str, model: str) -> Report | None:
    """The HTML report of the newest monitor run of ``model`` (MLflow tags ``mlops.flow`` =
    monitor, ``mlops.model``) in ``experiment`` that logged one; None when there is none."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    quoted = model.replace("'", "\\'")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`mlops.flow` = 'monitor' and tags.`mlops.model` = '{quoted}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        with tempfile.TemporaryDirectory(prefix="mlops-report-") as folder:
            try:
                path = client.download_artifacts(run.info.run_id, REPORT_ARTIFACT, folder)
            except (MlflowException, OSError):
                continue  # a window too small for a report: try the one before
            html = Path(path).read_text(encoding="utf-8", errors="replace")
        started = run.info.start_time
        return Report(
            run_id=run.info.run_id,
            experiment_id=found.experiment_id,
            started=None if not started else datetime.fromtimestamp(started / 1000, tz=UTC),
            model_version=run.data.tags.get("mlops.model_version"),
            html=html,
        )
    return None


def logged_models(engine: sa.Engine) -> list[str]:
    """The model names in the request log and the monitoring history."""
    with engine.connect() as conn:
        served = conn.execute(sa.select(prediction_log.c.model_name).distinct()).scalars()
        monitored = conn.execute(sa.select(monitoring_runs.c.model_name).distinct()).scalars()
        return sorted({*served, *monitored})


def request_stats(engine: sa.Engine, *, model: str, since: datetime, bucket: str) -> pd.DataFrame:
    """Requests, rows scored and latency percentiles (ms) of ``model`` per ``bucket`` (a
    pandas frequency: ``"h"``, ``"15min"``, ``"D"``) since ``since``, from the newest
    :data:`MAX_LOG_ROWS` requests."""
    p = prediction_log
    query = (
        sa.select(p.c.received_at, p.c.model_version, p.c.latency_ms, p.c.n_rows)
        .where(p.c.model_name == model, p.c.received_at >= as_utc(since))
        .order_by(p.c.received_at.desc())
        .limit(MAX_LOG_ROWS)
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(query).all(), columns=["received_at", "version", "latency_ms", "n_rows"]
        )
    columns = ["time", "requests", "rows", "p50 ms", "p95 ms", "p99 ms"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame["time"] = _utc(frame["received_at"]).dt.floor(bucket)
    grouped = frame.groupby("time")
    out = pd.DataFrame(
        {
            "requests": grouped.size(),
            "rows": grouped["n_rows"].sum(),
            "p50 ms": grouped["latency_ms"].quantile(0.50),
            "p95 ms": grouped["latency_ms"].quantile(0.95),
            "p99 ms": grouped["latency_ms"].quantile(0.99),
        }
    )
    return out.reset_index()[columns]


def live_accuracy(engine: sa.Engine, *, model: str, since: datetime, bucket: str) -> pd.DataFrame:
    """Accuracy of the logged predicted labels against the feedback labels of ``model``'s
    predictions since ``since``, per ``bucket`` of prediction time: ``(time, labelled,
    correct, accuracy)``. Only rows that received a label count."""
    p, f = prediction_log, prediction_feedback
    query = (
        sa.select(p.c.received_at, p.c.outputs, f.c.index, f.c.label)
        .join(f, f.c.request_id == p.c.request_id)
        .where(p.c.model_name == model, p.c.received_at >= as_utc(since))
        .order_by(p.c.received_at.desc())
        .limit(MAX_LOG_ROWS)
    )
    rows: list[tuple[Any, int]] = []
    with engine.connect() as conn:
        for received_at, outputs, index, label in conn.execute(query):
            predicted = _predicted_label(outputs, index)
            if predicted is not None:
                rows.append((received_at, int(predicted == int(label))))
    columns = ["time", "labelled", "correct", "accuracy"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows, columns=["received_at", "correct"])
    frame["time"] = _utc(frame["received_at"]).dt.floor(bucket)
    grouped = frame.groupby("time")["correct"]
    out = pd.DataFrame({"labelled": grouped.size(), "correct": grouped.sum()}).reset_index()
    out["accuracy"] = out["correct"] / out["labelled"]
    return out[columns]


def _predicted_label(outputs: Any, index: int) -> int | None:
    if isinstance(outputs, str | bytes):
        try:
            outputs = json.loads(outputs)
        except ValueError:
            return None
    if not isinstance(outputs, list) or not 0 <= index < len(outputs):
        return None
    entry = outputs[index]
    label = entry.get("label") if isinstance(entry, dict) else None
    try:
        return None if label is None else int(label)
    except (TypeError, ValueError):
        return None


def _utc(values: pd.Series) -> pd.Series:
    """Times as tz-aware UTC (SQLite hands back naive UTC datetimes)."""
    times = pd.to_datetime(values)
    if times.dt.tz is None:
        return times.dt.tz_localize(UTC)
    return times.dt.tz_convert(UTC)


# --- retraining -------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainDeployment:
    """A ``retrain/<model>`` deployment as the Prefect API has it."""

    id: str
    name: str
    """``retrain/<model>``."""
    model: str
    paused: bool
    work_pool: str | None
    description: str


@dataclass(frozen=True)
class TriggerInfo:
    """An event trigger of a deployment (an automation that runs it)."""

    name: str
    enabled: bool
    events: list[str]
    resource: str
    posture: str
    threshold: int
    within_s: float
    parameters: dict[str, Any]


def retrain_deployments(client: SyncPrefectClient) -> list[RetrainDeployment]:
    """Every deployment of the ``retrain`` flow, by model."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))
    return sorted(
        (
            RetrainDeployment(
                id=str(d.id),
                name=f"retrain/{d.name}",
                model=str((d.parameters or {}).get("model_name") or d.name),
                paused=bool(d.paused),
                work_pool=d.work_pool_name,
                description=d.description or "",
            )
            for d in found
        ),
        key=lambda d: d.name,
    )


def deployment_triggers(client: SyncPrefectClient, deployment_id: str) -> list[TriggerInfo]:
    """The event triggers that run the deployment: automations related to it whose
    trigger is an event trigger (``threshold`` events ``within`` seconds)."""
    found = client.read_resource_related_automations(f"prefect.deployment.{deployment_id}")
    triggers = []
    for automation in found:
        trigger = automation.trigger
        expect = sorted(getattr(trigger, "expect", None) or [])
        match = getattr(trigger, "match", None)
        resource = ""
        if match is not None:
            resource = ", ".join(
                f"{key} = {', '.join(value) if isinstance(value, list) else value}"
                for key, value in match.root.items()
            )
        parameters: dict[str, Any] = {}
        for action in automation.actions:
            parameters.update(getattr(action, "parameters", None) or {})
        within = getattr(trigger, "within", None)
        triggers.append(
            TriggerInfo(
                name=automation.name,
                enabled=automation.enabled,
                events=expect,
                resource=resource,
                posture=str(getattr(getattr(trigger, "posture", ""), "value", "")),
                threshold=int(getattr(trigger, "threshold", 1) or 1),
                within_s=within.total_seconds() if within is not None else 0.0,
                parameters=parameters,
            )
        )
    return triggers
