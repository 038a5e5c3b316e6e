from __future__ import annotations

from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.compute import compute_features
from mlops.features.definition import FeatureView


@task(cache_policy=NO_CACHE)
def compute_view(
    view: FeatureView, events: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """Feature rows of ``view`` for the events in [start, end)."""
    return compute_features(view, events, start=start, end=end)
