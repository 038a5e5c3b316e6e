from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.materialize import Plan, incremental_start, plan
from mlops.features.offline import OfflineStore
from mlops.features.registry import open_registry


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def plan_materialization(
    view: FeatureView,
    *,
    start: datetime | None,
    end: datetime | None,
    mode: Literal["full", "incremental"],
    chunk_days: int | None,
    chunk_events: int,
    offline_root: Path,
    registry_url: str,
) -> Plan:
    """Whole UTC days to (re)write, in chunks (none when incremental finds nothing new).

    Incremental: from the last materialized day (it may have been partial), or from the
    first unreadable partition if one is older, to the source's last day.
    """
    logger = get_run_logger()
    if mode == "incremental":
        registry = open_registry(registry_url)
        try:
            start = incremental_start(view, registry=registry, offline=OfflineStore(offline_root))
        finally:
            registry.dispose()
        if start is None:
            logger.info("%s: no materialization recorded, materializing everything", view.ref)
        else:
            logger.info("%s: incremental from %s", view.ref, start.isoformat())
    return plan(
        view,
        start=start,
        end=end,
        chunk_days=chunk_days,
        chunk_events=chunk_events,
        allow_empty=mode == "incremental",
    )
