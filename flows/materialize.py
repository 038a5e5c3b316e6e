"""Materialize a feature view: source events → offline store (Parquet) + online store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from mlops import events
from mlops.artifacts import artifact_key
from mlops.features.window import align
from mlops.settings import Settings
from mlops.specs import get_view
from tasks.features.compute import compute_view
from tasks.features.load_events import load_events
from tasks.features.plan import plan_window
from tasks.features.write_offline import write_offline
from tasks.features.write_online import write_online


@flow(name="materialize", log_prints=False)
def materialize(
    view_name: str = "card_transactions",
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Compute ``view_name`` over whole UTC days in [start, end) (default: all the source
    covers) and replace those days in the offline store; upsert the newest row per
    entity into the online store."""
    logger = get_run_logger()
    settings = Settings()
    view = get_view(view_name, settings)
    lo, hi = align(start, end)
    raw: pd.DataFrame = load_events(view, lo, hi)
    window = plan_window(view, raw, lo, hi)
    rows: pd.DataFrame = compute_view(view, raw, window.start, window.end)
    partitions = write_offline(view, rows, window.days, settings.offline_path)
    online_rows = write_online(view, rows, settings.online_store)
    summary = {
        "view": view.name,
        "version": view.version,
        "window": str(window),
        "rows": len(rows),
        "partitions": len(partitions),
        "entities_online": online_rows,
        "online_store": settings.online_store.type,
    }
    create_table_artifact(
        [summary],
        key=artifact_key("materialize", view.name),
        description=f"Materialized {view.ref}",
    )
    events.emit(events.FEATURES_MATERIALIZED, events.view_resource(view.name), summary)
    logger.info("materialized %s: %s", view.ref, summary)
    return summary
