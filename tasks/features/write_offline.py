from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.features.definition import FeatureView
from mlops.features.offline import OfflineStore


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def write_offline(
    view: FeatureView, rows: pd.DataFrame, days: list[date], root: Path
) -> list[Path]:
    """Replace the view's offline partitions of ``days`` (atomic per partition)."""
    return OfflineStore(root).write(view, rows, days)
