"""Features: every feature view with its versions, schema, freshness and materializations,
and a form that starts a materialization.

The statistics come from :func:`mlops.platform.features.feature_store_stats` (the feature
registry, the offline store and the online store; an unreachable online store shows as
``unknown`` freshness with the reason) and the details of a view from the feature
registry (:mod:`mlops.features.registry`). A materialization is a flow run of the
deployment ``materialize/<view>`` through the Prefect API
(:func:`mlops.platform.orchestration.start_flow_run`), picked up by the ``local`` pool's
worker (``mlops up`` runs one); the page lists the latest runs of that flow.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from mlops.features.definition import FeatureView, window_label
from mlops.features.registry import feature_entries, open_registry
from mlops.platform.features import ViewStats, feature_store_stats
from mlops.settings import Settings
from mlops.specs import all_views
from ui.auth import can_change_state, require_write
from ui.common import (
    BACKEND_ERRORS,
    STATE_ICONS,
    ago,
    flow_run_url,
    prefect,
    recent_flow_runs,
    settings,
    show_error,
    start_run,
    when,
)

FRESHNESS_MARK = {
    "fresh": "🟢 fresh",
    "stale": "🟠 stale",
    "empty": "⚪ empty",
    "unknown": "❔ unknown",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def stats_frame(stats: list[ViewStats]) -> pd.DataFrame:
    rows = []
    for s in stats:
        last = s.last_materialization
        rows.append(
            {
                "view": s.name,
                "version": s.version,
                "entity": s.entity,
                "features": s.features,
                "owner": s.owner,
                "freshness": FRESHNESS_MARK[s.freshness],
                "online age": _duration(s.online_age_s),
                "ttl": _duration(s.ttl_s),
                "last materialized": last.finished_at if last else None,
                "interval": f"{last.start:%Y-%m-%d} → {last.end:%Y-%m-%d}" if last else "never",
                "rows": last.rows if last else None,
                "offline days": s.offline_partitions,
                "offline from": s.offline_first_day,
                "offline to": s.offline_last_day,
                "versions": len(s.versions),
            }
        )
    return pd.DataFrame(rows)


def render_stats(cfg: Settings) -> list[ViewStats]:
    try:
        with st.spinner("Reading the feature registry and the stores..."):
            stats = feature_store_stats(cfg)
    except BACKEND_ERRORS as exc:
        show_error(
            "The feature store cannot be read",
            exc,
            "Check features.yaml (MLOPS_FEATURES__DEFINITIONS) and the feature registry "
            "(MLOPS_FEATURES__REGISTRY_URL).",
        )
        return []
    if not stats:
        st.info("No feature view is declared: add one to features.yaml (see examples/).")
        return []
    st.dataframe(
        stats_frame(stats),
        hide_index=True,
        column_config={
            "last materialized": st.column_config.DatetimeColumn(
                "last materialized (UTC)", format="YYYY-MM-DD HH:mm"
            )
        },
    )
    for s in stats:
        if s.online_error:
            st.error(
                f"{s.name}: the online store cannot be read ({s.online_error}). Check "
                "MLOPS_ONLINE_STORE__* (Redis running? the SQLite file readable?)."
            )
        if s.offline_unreadable_days:
            days = ", ".join(f"{d:%Y-%m-%d}" for d in s.offline_unreadable_days[:10])
            st.warning(
                f"{s.name}: unreadable offline partitions ({days}): materialize those days "
                "again (incremental mode redoes damaged partitions)."
            )
        if s.online_version and s.online_version != s.version:
            st.warning(
                f"{s.name}: the online store holds version {s.online_version}, the definition "
                f"is version {s.version}: materialize the view so serving gets the new version."
            )
    return stats


def render_view(cfg: Settings, view: FeatureView, stat: ViewStats | None) -> None:
    with st.expander(f"{view.name} · version {view.version}", expanded=False):
        st.caption(
            f"entity `{view.entity}` · timestamp `{view.timestamp}` · ttl {window_label(view.ttl)}"
            f" · source {view.source.path} ({view.source.format})"
            + (f" · {view.description}" if view.description else "")
        )
        schema = pd.DataFrame(feature_entries(view))
        schema["window"] = [
            window_label(timedelta(seconds=int(w))) if isinstance(w, int) else ""
            for w in schema["window_s"]
        ]
        st.markdown("**Schema**")
        st.dataframe(
            schema[["name", "dtype", "kind", "column", "function", "window"]], hide_index=True
        )
        if stat is not None and stat.versions:
            st.markdown("**Versions**")
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "version": v.version,
                            "current": v.current,
                            "first registered": v.first_registered_at,
                            "last seen": v.last_seen_at,
                        }
                        for v in stat.versions
                    ]
                ),
                hide_index=True,
            )
        url = cfg.features.registry_url
        assert url is not None
        try:
            registry = open_registry(url)
            try:
                runs = registry.materializations(view.name, limit=30)
            finally:
                registry.dispose()
        except BACKEND_ERRORS as exc:
            show_error("The materializations cannot be read", exc, "Check the feature registry.")
            return
        if not runs:
            st.info(f"{view.name} was never materialized: start a materialization below.")
            return
        st.markdown("**Materializations**")
        frame = pd.DataFrame(
            [
                {
                    "finished": m.finished_at,
                    "version": m.version,
                    "from": m.start,
                    "to": m.end,
                    "rows": m.rows,
                    "partitions": m.partitions,
                    "entities online": m.entities_online,
                    "newest event": m.max_event_ts,
                    "flow run": m.flow_run_id or "",
                }
                for m in runs
            ]
        )
        st.dataframe(frame, hide_index=True)
        st.altair_chart(
            alt.Chart(frame)
            .mark_bar()
            .encode(
                x=alt.X("finished:T", title="finished (UTC)"),
                y=alt.Y("rows:Q", title="rows written"),
                color="version:N",
                tooltip=["finished:T", "from:T", "to:T", "rows:Q", "version:N"],
            )
            .properties(height=160),
            use_container_width=True,
        )


def _day_start(day: date) -> str:
    return datetime.combine(day, time(0), tzinfo=UTC).isoformat()


def materialize_parameters(
    view: str, mode: str, start: date | None, end: date | None, chunk_days: int
) -> dict[str, Any]:
    """The flow's parameters: ``incremental`` goes on from the last recorded day;
    ``full`` rewrites the whole days from ``start`` to ``end`` (exclusive)."""
    parameters: dict[str, Any] = {"view_name": view, "mode": mode}
    if mode == "full":
        if start is not None:
            parameters["start"] = _day_start(start)
        if end is not None:
            parameters["end"] = _day_start(end)
    if chunk_days > 0:
        parameters["chunk_days"] = chunk_days
    return parameters


def render_materialize(cfg: Settings, views: list[FeatureView]) -> None:
    st.subheader("Materialize")
    if not views:
        return
    with st.form("materialize"):
        left, middle, right = st.columns(3)
        view = left.selectbox("Feature view", [v.name for v in views])
        mode = middle.radio(
            "Mode",
            ["incremental", "full"],
            horizontal=True,
            help="incremental: from the last materialized day (and damaged partitions); "
            "full: the days between the dates below (default: all the source holds)",
        )
        chunk_days = right.number_input(
            "Days per chunk (0: automatic)", min_value=0, max_value=366, value=0, step=1
        )
        start_col, end_col = st.columns(2)
        start = start_col.date_input("From day (full)", value=None)
        end = end_col.date_input("To day, exclusive (full)", value=None)
        submitted = st.form_submit_button(
            "Start materialization", type="primary", disabled=not can_change_state()
        )
    if not can_change_state():
        st.caption("Starting a run needs the management token (unlock in the sidebar).")
    if submitted and view:
        if mode == "full" and start and end and end <= start:
            st.error(
                f"The interval is empty: 'to' ({end}) must come after 'from' ({start}). "
                "Pick a later 'to' day."
            )
        elif require_write(f"materialize {view}"):
            deployment = f"materialize/{view}"
            parameters = materialize_parameters(view, str(mode), start, end, int(chunk_days))
            ref = start_run(cfg, deployment, parameters)
            if ref is not None:
                url = flow_run_url(ref.id, cfg)
                link = f" ([Prefect UI]({url}))" if url else ""
                st.success(f"Started flow run {ref.id} ({ref.name}) of {deployment}{link}.")
    render_runs(cfg)


def render_runs(cfg: Settings) -> None:
    try:
        with prefect(cfg) as client:
            runs = recent_flow_runs(client, flow_names=["materialize"], limit=10)
    except BACKEND_ERRORS as exc:
        show_error("The materialization runs cannot be read", exc, "Check the Prefect server.")
        return
    if not runs:
        st.caption("No materialization run yet.")
        return
    st.markdown("**Latest materialization runs**")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "state": f"{STATE_ICONS.get(r['state_type'], '')} {r['state']}",
                    "deployment": r["deployment"],
                    "run": r["name"],
                    "started": ago(r["started"]),
                    "mode": r["parameters"].get("mode", ""),
                    "message": r["message"],
                    "link": flow_run_url(r["id"], cfg),
                }
                for r in runs
            ]
        ),
        hide_index=True,
        column_config={"link": st.column_config.LinkColumn("Prefect UI", display_text="open")},
    )


def render() -> None:
    cfg = settings()
    st.title("Features")
    st.caption(
        f"registry {cfg.features.registry_url} · offline {cfg.offline_path} · "
        f"online {cfg.online_store.type} · {when(datetime.now(UTC))}"
    )
    stats = render_stats(cfg)
    try:
        views = all_views(cfg)
    except BACKEND_ERRORS as exc:
        show_error("The feature views cannot be read", exc, "Fix features.yaml.")
        views = []
    by_name = {s.name: s for s in stats}
    for view in views:
        render_view(cfg, view, by_name.get(view.name))
    render_materialize(cfg, views)


render()
