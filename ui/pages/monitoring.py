"""Monitoring: how the served model is doing, from what the monitor flow and the app wrote.

- drift share and per-feature drift over time: the monitor flow's ``monitoring_runs``
  table (:mod:`mlops.monitoring.history`), beside the request log;
- the latest Evidently report: the HTML artifact ``monitoring/report.html`` of the
  newest monitor run in MLflow, embedded;
- live accuracy: logged predictions against the feedback labels sent to ``/feedback``
  (the request log's tables), per hour or day, with the threshold below which the monitor
  emits ``mlops.model.performance-degraded``;
- request volume and latency percentiles from the request log.

The request log's database is ``MLOPS_REQUEST_LOG__URL`` (SQLite in the home by default).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import altair as alt
import pandas as pd
import sqlalchemy as sa
import streamlit as st

from mlops.monitoring.history import history_engine, recent_runs
from ui.common import BACKEND_ERRORS, mlflow, mlflow_run_url, settings, show_error, when
from ui.data import (
    drift_frame,
    feature_drift_frame,
    latest_report,
    live_accuracy,
    logged_models,
    request_stats,
)

PERIODS = {
    "last 24 hours": (timedelta(hours=24), "h"),
    "last 7 days": (timedelta(days=7), "6h"),
    "last 30 days": (timedelta(days=30), "D"),
}
LOG_HINT = (
    "Check MLOPS_REQUEST_LOG__URL (the app's request log: SQLite in the home by default, "
    "Postgres in production) and that its database answers, then reload the page."
)
MLFLOW_HINT = "Check that MLflow answers at MLOPS_MLFLOW__TRACKING_URI, then reload the page."


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> sa.Engine:
    """One engine per request-log URL for the console's process (schema brought up to
    date once)."""
    return history_engine(url)


def threshold_rule(value: float, label: str) -> alt.Chart:
    return (
        alt.Chart(pd.DataFrame({"threshold": [value], "label": [label]}))
        .mark_rule(color="#d62728", strokeDash=[6, 4])
        .encode(y="threshold:Q", tooltip=["label", "threshold"])
    )


def line(frame: pd.DataFrame, y: str, title: str, fmt: str = ".3f") -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y(f"{y}:Q", title=title),
            tooltip=[
                alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip(f"{y}:Q", format=fmt),
            ],
        )
    )


def show_drift(engine: sa.Engine, model: str, since: datetime) -> None:
    cfg = settings()
    st.subheader("Drift")
    runs = [r for r in recent_runs(engine, model_name=model, limit=1000) if r.window_end >= since]
    if not runs:
        st.info(
            f"No monitor run of {model} in this period: the deployment monitor/{model} runs "
            "hourly once `mlops deploy` registered it (or run `mlops monitor`)."
        )
        return
    history = drift_frame(runs)
    latest = history.iloc[-1]
    previous = history.iloc[-2] if len(history) > 1 else None
    threshold = cfg.monitoring.drift_share_threshold
    left, middle, right = st.columns(3)
    share = latest["drift share"]
    left.metric(
        "drift share (latest window)",
        "not judged" if pd.isna(share) else f"{share:.0%}",
        delta=None
        if previous is None or pd.isna(share) or pd.isna(previous["drift share"])
        else f"{share - previous['drift share']:+.0%}",
        delta_color="inverse",
        help=f"the monitor emits drift-detected at {threshold:.0%} or more",
    )
    middle.metric(
        "drifted features", int(latest["drifted features"]), help=latest["drifted"] or None
    )
    right.metric("rows in the window", int(latest["rows"]))
    if not pd.isna(share) and share >= threshold:
        st.warning(
            f"Drift share {share:.0%} is at or above the threshold {threshold:.0%}: the "
            f"monitor emitted mlops.model.drift-detected (see the Retraining page). "
            f"Drifted: {latest['drifted']}."
        )
    judged = history.dropna(subset=["drift share"])
    if not judged.empty:
        chart = line(judged, "drift share", "drift share", ".0%") + threshold_rule(
            threshold, "drift-detected threshold"
        )
        st.altair_chart(chart, width="stretch")

    features = feature_drift_frame(runs)
    if features.empty:
        st.caption("No per-feature figures yet (windows too small to judge drift).")
        return
    st.markdown("**Per-feature drift score over time**")
    points = (
        alt.Chart(features)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("score:Q", title="drift score"),
            color=alt.Color("feature:N"),
            shape=alt.Shape("drifted:N"),
            tooltip=[
                "feature",
                "score",
                "threshold",
                "drifted",
                "method",
                alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"),
            ],
        )
        .interactive()
    )
    st.altair_chart(points, width="stretch")
    newest = features[features["time"] == features["time"].max()]
    st.dataframe(
        newest.drop(columns=["time"]).sort_values("score", ascending=False),
        hide_index=True,
        width="stretch",
    )


def show_report(model: str) -> None:
    cfg = settings()
    st.subheader("Latest Evidently report")
    try:
        with st.spinner("Fetching the latest report from MLflow…"):
            report = latest_report(mlflow(cfg), experiment=cfg.mlflow.experiment, model=model)
    except BACKEND_ERRORS as exc:
        show_error("The latest Evidently report cannot be read", exc, MLFLOW_HINT)
        return
    if report is None:
        st.info(
            f"No monitor run of {model} logged a report in the experiment "
            f"{cfg.mlflow.experiment!r} yet (a window needs MLOPS_MONITORING__MIN_ROWS rows)."
        )
        return
    st.caption(
        f"monitor run {report.run_id} of version {report.model_version or '?'}, "
        f"{when(report.started)}"
    )
    url = mlflow_run_url(report.experiment_id, report.run_id, cfg)
    if url:
        st.link_button("Open the run in MLflow", url)
    with st.expander("report", expanded=True):
        st.iframe(report.html, height=900)


def show_accuracy(engine: sa.Engine, model: str, since: datetime, bucket: str) -> None:
    cfg = settings()
    st.subheader("Live accuracy")
    frame = live_accuracy(engine, model=model, since=since, bucket=bucket)
    minimum = cfg.monitoring.min_live_accuracy
    if frame.empty:
        st.info(
            "No feedback label for this period: send true labels to POST /feedback "
            "(request_id, index, label) to measure live accuracy."
        )
        return
    labelled, correct = int(frame["labelled"].sum()), int(frame["correct"].sum())
    overall = correct / labelled
    left, right = st.columns(2)
    left.metric("live accuracy", f"{overall:.1%}", help=f"performance-degraded below {minimum:.0%}")
    right.metric("labelled rows", f"{labelled:,}")
    if overall < minimum:
        st.warning(
            f"Live accuracy {overall:.1%} is below {minimum:.0%}: the monitor emits "
            "mlops.model.performance-degraded, which starts a retraining."
        )
    chart = line(frame, "accuracy", "accuracy", ".1%") + threshold_rule(
        minimum, "performance-degraded threshold"
    )
    st.altair_chart(chart, width="stretch")


def show_traffic(engine: sa.Engine, model: str, since: datetime, bucket: str) -> None:
    st.subheader("Requests and latency")
    stats = request_stats(engine, model=model, since=since, bucket=bucket)
    if stats.empty:
        st.info(f"No request to {model} logged in this period.")
        return
    left, middle, right = st.columns(3)
    left.metric("requests", f"{int(stats['requests'].sum()):,}")
    middle.metric("rows scored", f"{int(stats['rows'].sum()):,}")
    right.metric("worst p95 latency", f"{stats['p95 ms'].max():.1f} ms")
    volume = (
        alt.Chart(stats)
        .mark_bar()
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("requests:Q"),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"), "requests", "rows"],
        )
    )
    st.altair_chart(volume, width="stretch")
    latency = stats.melt(
        id_vars="time",
        value_vars=["p50 ms", "p95 ms", "p99 ms"],
        var_name="percentile",
        value_name="ms",
    )
    st.altair_chart(
        alt.Chart(latency)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("ms:Q", title="latency (ms)"),
            color="percentile:N",
            tooltip=["percentile", alt.Tooltip("ms:Q", format=".1f")],
        ),
        width="stretch",
    )


def render() -> None:
    cfg = settings()
    st.title("Monitoring")
    url = cfg.request_log.url or ""
    shown = sa.make_url(url).render_as_string(hide_password=True) if url else "(not set)"
    st.caption(f"request log: {shown}")
    try:
        with st.spinner("Opening the request log…"):
            engine = _engine(url)
            models = logged_models(engine)
    except BACKEND_ERRORS as exc:
        show_error("The request log cannot be read", exc, LOG_HINT)
        return
    names = sorted({*models, cfg.serving.model_name})
    left, right = st.columns([2, 1])
    model = left.selectbox(
        "model", names, index=names.index(cfg.serving.model_name), key="monitor_model"
    )
    period = right.selectbox("period", list(PERIODS), key="period")
    span, bucket = PERIODS[period]
    since = datetime.now(UTC) - span
    for section in (
        lambda: show_drift(engine, model, since),
        lambda: show_report(model),
        lambda: show_accuracy(engine, model, since, bucket),
        lambda: show_traffic(engine, model, since, bucket),
    ):
        try:
            section()
        except BACKEND_ERRORS as exc:  # one section down, the others still shown
            show_error("The request log cannot be read", exc, LOG_HINT)


render()
