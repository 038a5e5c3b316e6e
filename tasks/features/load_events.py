from __future__ import annotations

from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.source import view_events


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def load_events(view: FeatureView, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """The view's source events in [start, end), with the aggregation look-back."""
    return view_events(view, start=start, end=end)
