from __future__ import annotations

from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.window import Window, resolve


@task(cache_policy=NO_CACHE)
def plan_window(
    view: FeatureView, events: pd.DataFrame, start: datetime | None, end: datetime | None
) -> Window:
    """Whole UTC days to (re)write: the requested range, else what the source covers."""
    return resolve(start, end, events[view.timestamp])
