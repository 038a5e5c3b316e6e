from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.specs import ModelSpec
from mlops.training.data import TimeSplits, time_split


@task(cache_policy=NO_CACHE)
def split_by_time(spec: ModelSpec, training_set: pd.DataFrame) -> TimeSplits:
    """Train (oldest 70 %), validation (next 15 %), holdout (newest 15 %)."""
    return time_split(
        training_set,
        timestamp=spec.timestamp,
        label=spec.label,
        feature_names=spec.feature_names,
    )
