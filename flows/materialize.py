"""Materialize a feature view: source events → offline store (Parquet) + online store.

Full mode rewrites the whole UTC days of [start, end) (default: all the source covers);
incremental mode starts from the last materialized day recorded in the feature
registry (or the first damaged partition). Days are processed in chunks of bounded
size, newest first, each a task that writes its partitions and sends online the newest
row of the entities no newer chunk had; the interval is recorded; a train/serve skew
check compares a sample of entities in both stores.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from mlops import events
from mlops.artifacts import artifact_key
from mlops.features.materialize import Totals
from mlops.lifecycle import on_flow_crashed
from mlops.settings import Settings
from mlops.specs import get_view
from tasks.features.check_skew import train_serve_skew
from tasks.features.materialize_chunk import materialize_days
from tasks.features.plan import plan_materialization
from tasks.features.record import record_materialization


@flow(
    name="materialize",
    log_prints=False,
    on_crashed=[on_flow_crashed],
    on_cancellation=[on_flow_crashed],
)
def materialize(
    view_name: str = "card_transactions",
    start: datetime | None = None,
    end: datetime | None = None,
    mode: Literal["full", "incremental"] = "full",
    chunk_days: int | None = None,
) -> dict[str, Any]:
    """Compute ``view_name`` over whole UTC days and replace those days in the offline
    store; upsert the newest row per entity into the online store; record the interval.

    ``mode="incremental"`` ignores ``start`` and goes on from the last recorded day.
    """
    logger = get_run_logger()
    settings = Settings()
    view = get_view(view_name, settings)
    assert settings.features.registry_url is not None
    the_plan = plan_materialization(
        view,
        start=start,
        end=end,
        mode=mode,
        chunk_days=chunk_days,
        chunk_events=settings.features.chunk_events,
        offline_root=settings.offline_path,
        registry_url=settings.features.registry_url,
    )
    if not the_plan.chunks:
        logger.info("%s is up to date: the source has nothing new", view.ref)
        return {"view": view.name, "version": view.version, "mode": mode, "up_to_date": True}

    progress = cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=artifact_key("materialize", view.name, "progress"),
            description=f"materializing {view.ref} {the_plan.window}",
        ),
    )
    totals = Totals(the_plan)
    for chunk in reversed(the_plan.chunks):  # newest first: each entity goes online once
        totals.add(
            materialize_days(
                view, chunk, settings.offline_path, settings.online_store, totals.sent_online
            )
        )
        update_progress_artifact(
            progress,
            100.0 * totals.chunks_done / len(the_plan.chunks),
            description=f"{view.ref}: {totals.chunks_done}/{len(the_plan.chunks)} chunks, "
            f"{totals.rows:,} rows",
        )
    result = totals.result()
    record_materialization(view, result, settings.features.registry_url)
    summary: dict[str, Any] = {**result.summary(), "mode": mode}
    summary["online_store"] = settings.online_store.type
    if settings.features.skew_sample:
        skew = train_serve_skew(
            view, settings.offline_path, settings.online_store, settings.features.skew_sample
        )
        summary["skew_rate"] = skew.rate
    create_table_artifact(
        [summary],
        key=artifact_key("materialize", view.name),
        description=f"Materialized {view.ref}",
    )
    events.emit(events.FEATURES_MATERIALIZED, events.view_resource(view.name), summary)
    logger.info("materialized %s: %s", view.ref, summary)
    return summary
