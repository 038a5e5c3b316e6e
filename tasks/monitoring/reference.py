from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.monitoring.reference import reference_frame


@task(cache_policy=NO_CACHE)
def select_reference(
    holdout: pd.DataFrame, feature_names: list[str], max_rows: int
) -> pd.DataFrame:
    """The drift reference: the holdout's features, at most ``max_rows`` (a seeded sample)."""
    return reference_frame(holdout, feature_names, max_rows)
