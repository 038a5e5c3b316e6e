from __future__ import annotations

from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.monitoring.window import read_window as read_log_window
from mlops.serving.request_log import RequestLog


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def read_window(
    log: RequestLog,
    model_name: str,
    model_version: str,
    feature_names: list[str],
    since: datetime,
    until: datetime,
) -> pd.DataFrame:
    """The scored rows of ``model_name`` v``model_version`` logged in ``[since, until)``,
    with their features, predicted labels and the feedback labels received so far."""
    return read_log_window(
        log,
        model_name=model_name,
        model_version=model_version,
        feature_names=feature_names,
        since=since,
        until=until,
    )
