from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.materialize import Chunk, ChunkResult, materialize_chunk
from mlops.features.offline import OfflineStore
from mlops.features.online import build_online_store
from mlops.settings import OnlineStoreSettings


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    task_run_name="materialize {view.name} {chunk.start:%Y-%m-%d}..{chunk.end:%Y-%m-%d}",
)
def materialize_days(
    view: FeatureView,
    chunk: Chunk,
    offline_root: Path,
    online_config: OnlineStoreSettings,
    already_online: pa.Array,
) -> ChunkResult:
    """Compute one chunk of days from the source, replace its offline partitions, and
    send online the newest row of each entity not in ``already_online``."""
    store = build_online_store(online_config)
    try:
        return materialize_chunk(
            view,
            chunk,
            offline=OfflineStore(offline_root),
            online=store,
            already_online=already_online,
        )
    finally:
        store.close()
