from __future__ import annotations

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.registry import promote


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def promote_version(client: MlflowClient, name: str, version: str) -> None:
    """Move the ``champion`` alias to ``version``."""
    promote(client=client, name=name, version=version)
