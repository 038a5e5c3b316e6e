from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from mlops.features.definition import FeatureView
from mlops.features.materialize import MaterializeResult
from mlops.features.registry import MaterializationRecord, open_registry


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def record_materialization(
    view: FeatureView, result: MaterializeResult, registry_url: str
) -> MaterializationRecord:
    """Record the interval written (the incremental starting point) in the registry."""
    registry = open_registry(registry_url)
    try:
        return registry.record_materialization(
            view,
            start=result.start,
            end=result.end,
            rows=result.rows,
            partitions=result.partitions,
            entities_online=result.entities_online,
            max_event_ts=result.max_event_ts,
            flow_run_id=str(flow_run.get_id() or "") or None,
        )
    finally:
        registry.dispose()
