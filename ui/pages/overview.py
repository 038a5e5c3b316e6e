"""Overview: is the platform healthy, what is served, how is it doing, what ran lately.

Four parts, each read on its own so that one backend down leaves the others visible:

* **Backends** — Prefect, MLflow, the online store and the request log, each with what
  was seen or why it is unreachable and what to check;
* **Champions** — per registered model, the version aliased ``champion``, since when
  (the ``promotion.at`` tag, else the version's creation) and its holdout metrics;
* **Monitoring** — per model, the latest drift share and live accuracy of the monitor
  flow (``monitoring_runs``, :mod:`mlops.monitoring.history`) against the thresholds,
  and their course over time;
* **Latest flow runs** — the newest runs of every flow with their states.

Backends are probed with short timeouts first, so an unreachable server costs seconds,
not a page that hangs in the clients' retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import altair as alt
import httpx
import pandas as pd
import sqlalchemy as sa
import streamlit as st

from mlops.features.online import build_online_store
from mlops.monitoring.history import history_engine, recent_runs
from mlops.platform.models import PROMOTION_AT, list_models, model_version
from mlops.registry import CHAMPION
from mlops.serving.request_log import prediction_log
from mlops.settings import RedisOnlineStoreSettings, Settings
from mlops.specs import all_views
from mlops.sqldb import as_utc, create_engine
from ui.common import (
    BACKEND_ERRORS,
    STATE_ICONS,
    ago,
    flow_run_url,
    mlflow,
    prefect,
    prefect_api_url,
    recent_flow_runs,
    settings,
    show_error,
    when,
)

PROBE_TIMEOUT_S = 3.0
KEY_METRICS = ("roc_auc", "pr_auc", "accuracy", "log_loss")


@dataclass(frozen=True)
class BackendHealth:
    name: str
    ok: bool
    where: str
    detail: str
    hint: str = ""


def _masked(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def check_prefect(cfg: Settings) -> BackendHealth:
    url = prefect_api_url(cfg)
    if not url:
        return BackendHealth(
            "Prefect",
            False,
            "not configured",
            "no Prefect server is set",
            "Set MLOPS_PREFECT__API_URL (e.g. http://127.0.0.1:4200/api) or start the "
            "platform with `mlops up`.",
        )
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return BackendHealth(
            "Prefect",
            False,
            url,
            f"unreachable ({type(exc).__name__}: {exc})",
            "Start the Prefect server (`mlops up` does) or fix MLOPS_PREFECT__API_URL.",
        )
    if response.status_code != 200:
        return BackendHealth(
            "Prefect",
            False,
            url,
            f"/health answered HTTP {response.status_code}",
            "Look at the Prefect server's log (`mlops status` shows where it is).",
        )
    return BackendHealth("Prefect", True, url, "API healthy")


def check_mlflow(cfg: Settings) -> BackendHealth:
    uri = cfg.tracking_uri
    hint = "Start the MLflow server (`mlops up` does) or fix MLOPS_MLFLOW__TRACKING_URI."
    if uri.startswith(("http://", "https://")):
        try:
            response = httpx.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return BackendHealth(
                "MLflow", False, uri, f"unreachable ({type(exc).__name__}: {exc})", hint
            )
        if response.status_code != 200:
            return BackendHealth(
                "MLflow", False, uri, f"/health answered HTTP {response.status_code}", hint
            )
    try:
        models = list_models(mlflow(cfg))
    except BACKEND_ERRORS as exc:
        return BackendHealth("MLflow", False, _masked(uri), f"registry unreadable: {exc}", hint)
    return BackendHealth("MLflow", True, _masked(uri), f"{len(models)} registered model(s)")


def check_online_store(cfg: Settings) -> BackendHealth:
    config = cfg.online_store
    if isinstance(config, RedisOnlineStoreSettings):
        where = f"redis {_masked(config.url)}"
        hint = "Start Redis or fix MLOPS_ONLINE_STORE__URL."
    else:
        where = f"sqlite {config.path}"
        hint = "Check that MLOPS_ONLINE_STORE__PATH is readable."
    try:
        views = all_views(cfg)
    except BACKEND_ERRORS as exc:
        return BackendHealth(
            "Online store", False, where, f"feature views unreadable: {exc}", "Fix features.yaml."
        )
    try:
        store = build_online_store(config)
        try:
            newest = {view.name: store.newest_event_timestamp(view.name) for view in views}
        finally:
            store.close()
    except BACKEND_ERRORS as exc:
        return BackendHealth("Online store", False, where, f"unreachable: {exc}", hint)
    filled = {name: t for name, t in newest.items() if t is not None}
    if not filled:
        return BackendHealth(
            "Online store",
            True,
            where,
            "reachable, empty: materialize a feature view (Features page)",
        )
    latest = max(filled.values())
    return BackendHealth(
        "Online store",
        True,
        where,
        f"{len(filled)} of {len(newest)} view(s) filled, newest event {ago(latest)}",
    )


def check_request_log(cfg: Settings) -> BackendHealth:
    url = cfg.request_log.url
    assert url is not None  # filled by Settings
    where = _masked(url)
    hint = "Start the request log's database or fix MLOPS_REQUEST_LOG__URL."
    try:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(prediction_log.name):
                    return BackendHealth(
                        "Request log",
                        True,
                        where,
                        "reachable, no request logged yet (the app creates its tables)",
                    )
                since = datetime.now(UTC) - timedelta(hours=24)
                count, newest = conn.execute(
                    sa.select(sa.func.count(), sa.func.max(prediction_log.c.received_at)).where(
                        prediction_log.c.received_at >= since
                    )
                ).one()
        finally:
            engine.dispose()
    except BACKEND_ERRORS as exc:
        return BackendHealth("Request log", False, where, f"unreachable: {exc}", hint)
    last = ago(as_utc(newest)) if newest is not None else "none"
    return BackendHealth(
        "Request log", True, where, f"{count:,} request(s) in the last 24 h, last {last}"
    )


def render_health(cfg: Settings) -> dict[str, bool]:
    st.subheader("Backends")
    with st.spinner("Checking the backends..."):
        checks = [
            check_prefect(cfg),
            check_mlflow(cfg),
            check_online_store(cfg),
            check_request_log(cfg),
        ]
    for column, health in zip(st.columns(len(checks)), checks, strict=True):
        with column, st.container(border=True):
            mark = ":green[● healthy]" if health.ok else ":red[● unreachable]"
            st.markdown(f"**{health.name}** {mark}")
            st.caption(health.where)
            if health.ok:
                st.write(health.detail)
            else:
                st.error(f"{health.name}: {health.detail}. {health.hint}")
    return {health.name: health.ok for health in checks}


def _promoted_at(text: str | None) -> datetime | None:
    """The ``promotion.at`` tag as a time (None when absent or not ISO 8601)."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def champions_table(cfg: Settings) -> pd.DataFrame:
    """One row per registered model: its champion, since when, key holdout metrics."""
    client = mlflow(cfg)
    rows = []
    for model in list_models(client):
        version = model.aliases.get(CHAMPION)
        row: dict[str, object] = {"model": model.name, "champion": None, "since": None}
        if version is not None:
            info = model_version(client, name=model.name, version=version)
            since = _promoted_at(info.tags.get(PROMOTION_AT)) or info.created
            row |= {"champion": int(version), "since": since}
            for key in KEY_METRICS:
                value = info.metrics.get(f"holdout_{key}", info.metrics.get(f"val_{key}"))
                if value is not None:
                    row[key] = round(float(value), 4)
            row["feature views"] = ", ".join(info.feature_views)
        row["latest version"] = int(model.latest_version) if model.latest_version else None
        rows.append(row)
    return pd.DataFrame(rows)


def render_champions(cfg: Settings, mlflow_ok: bool) -> None:
    st.subheader("Champions")
    if not mlflow_ok:
        st.warning("MLflow is unreachable (see Backends): champions cannot be shown.")
        return
    try:
        table = champions_table(cfg)
    except BACKEND_ERRORS as exc:
        show_error("The registry cannot be read", exc, "Check MLflow (MLOPS_MLFLOW__TRACKING_URI).")
        return
    if table.empty:
        st.info(
            "No registered model yet: train one on the Training page, then promote it on "
            "the Models page."
        )
        return
    if table["champion"].isna().all():
        st.info("No model has a champion yet: promote a version on the Models page.")
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "since": st.column_config.DatetimeColumn("since (UTC)", format="YYYY-MM-DD HH:mm"),
            "champion": st.column_config.NumberColumn("champion version", format="%d"),
        },
    )


def monitoring_frame(cfg: Settings) -> pd.DataFrame:
    url = cfg.request_log.url
    assert url is not None
    engine = history_engine(url)
    try:
        runs = recent_runs(engine, limit=500)
    finally:
        engine.dispose()
    return pd.DataFrame(
        [
            {
                "model": run.model_name,
                "version": run.model_version,
                "at": run.window_end,
                "drift share": run.drift_share,
                "live accuracy": run.live_accuracy,
                "rows": run.n_rows,
                "labelled": run.n_labelled,
                "drifted features": ", ".join(run.drifted_features),
            }
            for run in runs
        ],
        columns=[
            "model",
            "version",
            "at",
            "drift share",
            "live accuracy",
            "rows",
            "labelled",
            "drifted features",
        ],
    )


def render_monitoring(cfg: Settings, request_log_ok: bool) -> None:
    st.subheader("Drift and live accuracy")
    if not request_log_ok:
        st.warning("The request log is unreachable (see Backends): no monitoring history.")
        return
    try:
        frame = monitoring_frame(cfg)
    except BACKEND_ERRORS as exc:
        show_error(
            "The monitoring history cannot be read",
            exc,
            "Check the request log's database (MLOPS_REQUEST_LOG__URL).",
        )
        return
    if frame.empty:
        st.info(
            "No monitoring run yet: the monitor/<model> deployment runs hourly once requests "
            "are logged (Retraining page: schedules)."
        )
        return
    limits = cfg.monitoring
    latest = frame.sort_values("at").groupby("model").tail(1).set_index("model")
    for model, row in latest.iterrows():
        drift, accuracy = row["drift share"], row["live accuracy"]
        left, middle, right = st.columns(3)
        left.metric(f"{model} v{row['version']}", f"{int(row['rows']):,} rows", ago(row["at"]))
        middle.metric(
            "drift share",
            "not judged" if pd.isna(drift) else f"{drift:.0%}",
            None if pd.isna(drift) else f"threshold {limits.drift_share_threshold:.0%}",
            delta_color="off",
        )
        right.metric(
            "live accuracy",
            "no feedback" if pd.isna(accuracy) else f"{accuracy:.1%}",
            None if pd.isna(accuracy) else f"minimum {limits.min_live_accuracy:.0%}",
            delta_color="off",
        )
        if not pd.isna(drift) and drift >= limits.drift_share_threshold:
            st.warning(f"{model}: drift share {drift:.0%} is at or over the threshold.")
        if not pd.isna(accuracy) and accuracy < limits.min_live_accuracy:
            st.warning(f"{model}: live accuracy {accuracy:.1%} is under the minimum.")
    long = frame.melt(
        id_vars=["model", "at"], value_vars=["drift share", "live accuracy"], var_name="measure"
    ).dropna(subset=["value"])
    if not long.empty:
        chart = (
            alt.Chart(long)
            .mark_line(point=True)
            .encode(
                x=alt.X("at:T", title="window end (UTC)"),
                y=alt.Y("value:Q", title=None, scale=alt.Scale(domain=[0, 1])),
                color="model:N",
                strokeDash="measure:N",
                tooltip=["model", "measure", alt.Tooltip("value:Q", format=".3f"), "at:T"],
            )
            .properties(height=220)
        )
        st.altair_chart(chart, use_container_width=True)


def render_flow_runs(cfg: Settings, prefect_ok: bool) -> None:
    st.subheader("Latest flow runs")
    if not prefect_ok:
        st.warning("Prefect is unreachable (see Backends): flow runs cannot be shown.")
        return
    try:
        with prefect(cfg) as client:
            runs = recent_flow_runs(client, limit=20)
    except BACKEND_ERRORS as exc:
        show_error("The flow runs cannot be read", exc, "Check the Prefect server.")
        return
    if not runs:
        st.info("No flow run yet: start one on the Features or Training page.")
        return
    table = pd.DataFrame(
        [
            {
                "state": f"{STATE_ICONS.get(r['state_type'], '')} {r['state']}",
                "deployment": r["deployment"] or r["flow"],
                "run": r["name"],
                "started": r["started"],
                "duration (s)": round(r["duration_s"], 1),
                "message": r["message"],
                "link": flow_run_url(r["id"], cfg),
            }
            for r in runs
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "started": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm"),
            "link": st.column_config.LinkColumn("Prefect UI", display_text="open"),
        },
    )


def render() -> None:
    cfg = settings()
    st.title("Overview")
    st.caption(f"home {cfg.home} · environment {cfg.environment} · {when(datetime.now(UTC))}")
    healthy = render_health(cfg)
    render_champions(cfg, healthy["MLflow"])
    render_monitoring(cfg, healthy["Request log"])
    render_flow_runs(cfg, healthy["Prefect"])


render()
