from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.offline import OfflineStore
from mlops.features.pit import point_in_time_join
from mlops.features.source import read_events
from mlops.specs import ModelSpec


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def build_training_set(
    spec: ModelSpec, offline_root: Path, start: datetime | None, end: datetime | None
) -> pd.DataFrame:
    """Label events in [start, end) joined point-in-time with every view of ``spec``."""
    labels = read_events(
        spec.labels,
        columns=[spec.entity, spec.timestamp, spec.label],
        timestamp=spec.timestamp,
        start=start,
        end=end,
    )
    offline = OfflineStore(offline_root)
    lookback = max(v.ttl for v in spec.views)
    feature_start = None if start is None else pd.Timestamp(start) - lookback
    views = [(v, offline.read(v, start=feature_start, end=end)) for v in spec.views]
    return point_in_time_join(labels, entity=spec.entity, timestamp=spec.timestamp, views=views)
