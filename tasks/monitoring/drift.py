from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.monitoring.drift import DriftReport, drift_report


@task(cache_policy=NO_CACHE)
def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: list[str],
    drift_share_threshold: float,
) -> DriftReport:
    """Evidently data drift + data summary of the window against the reference."""
    return drift_report(
        reference, current, feature_names, drift_share_threshold=drift_share_threshold
    )
