from __future__ import annotations

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.materialize import write_latest
from mlops.features.online import build_online_store
from mlops.settings import OnlineStoreSettings


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def write_online(view: FeatureView, latest: pa.Table | None, config: OnlineStoreSettings) -> int:
    """Upsert the newest row of each entity into the online store; returns rows written."""
    store = build_online_store(config)
    try:
        return write_latest(view, latest, online=store)
    finally:
        store.close()
