"""Shared fixtures: real services after a readiness probe, and one Prefect test harness.

Environment for the libraries is set here, before anything imports Prefect or MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis server (CI starts it); a clear failure, never a skip, when it is down."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}): start it (see .ci/run)")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One real, temporary Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``MLOPS_HOME`` with every other ``MLOPS_*`` variable cleared."""
    for key in list(os.environ):
        if key.startswith("MLOPS_") and not key.startswith("MLOPS_TEST_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_uris() -> Iterator[None]:
    """No test (and no flow) may leave MLflow's process-wide URIs pointing somewhere."""
    yield
    leaked = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    assert not any(leaked.values()), f"MLflow URIs leaked into the environment: {leaked}"
