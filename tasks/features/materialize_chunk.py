from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.materialize import Chunk, ChunkResult, materialize_chunk
from mlops.features.offline import OfflineStore


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    task_run_name="materialize {view.name} {chunk.start:%Y-%m-%d}..{chunk.end:%Y-%m-%d}",
)
def materialize_days(view: FeatureView, chunk: Chunk, offline_root: Path) -> ChunkResult:
    """Compute one chunk of days from the source and replace its offline partitions."""
    return materialize_chunk(view, chunk, offline=OfflineStore(offline_root))
