"""Shared fixtures: real services after a readiness probe, and one Prefect test harness.

Environment for the libraries is set here, before anything imports Prefect or MLflow.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_SERVER = os.environ.get(
    "MLOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)


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
def postgres_admin() -> Iterator[sa.Engine]:
    """The ``postgres`` database in autocommit, after a readiness probe (fails, never skips)."""
    engine = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"Postgres at {PG_SERVER} is not reachable ({exc}): start it (see .ci/run)")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: sa.Engine) -> Iterator[str]:
    """A fresh, empty database on the real Postgres server, dropped after the test."""
    name = f"mlops_test_{uuid.uuid4().hex}"
    with postgres_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    with postgres_admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One real, temporary Prefect API for every flow test of the session."""
    import tempfile

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Persisted task results (cached training sets) go to a folder of the session's own.
    with (
        tempfile.TemporaryDirectory(prefix="prefect-results-") as storage,
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}),
        prefect_test_harness(server_startup_timeout=120),
    ):
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
