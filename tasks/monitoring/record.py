from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.monitoring.history import MonitoringRun, history_engine, record_run


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def record_history(url: str, run: MonitoringRun) -> int:
    """Write the run to ``monitoring_runs`` in the request log's database; returns its id."""
    engine = history_engine(url)
    try:
        return record_run(engine, run)
    finally:
        engine.dispose()
