from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.online import build_online_store
from mlops.settings import OnlineStoreSettings


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def write_online(view: FeatureView, rows: pd.DataFrame, config: OnlineStoreSettings) -> int:
    """Upsert the newest row of each entity into the online store; returns rows written."""
    store = build_online_store(config)
    try:
        store.update(view.name)
        return store.write_batch(
            view=view.name,
            version=view.version,
            frame=rows,
            entity=view.entity,
            timestamp=view.timestamp,
            features=view.feature_names,
            ttl=view.ttl,
        )
    finally:
        store.close()
