"""Deployments, work pools and the GPU limit against the real Prefect API (the harness).

``prefect deploy --all`` (prefect.yaml, run as a subprocess in the project root) and
``mlops deploy`` (the code) must leave the same deployments in the API; the retrain
trigger must turn a burst of events into one flow run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from deployments import PROJECT_DIR, build_deployments, retrain_deployment
from deployments.agreement import summarize_api, summarize_code
from deployments.pools import GPU_POOL_ENV, ensure_pools, gpu_limit_name, job_template
from mlops.cli.main import app
from mlops.events import MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED, emit, model_resource
from mlops.processes import terminate
from mlops.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

runner = CliRunner()


def _registered(names: list[str]) -> dict[str, dict[str, Any]]:
    async def read() -> dict[str, dict[str, Any]]:
        async with get_client() as client:
            return await summarize_api(client, names)

    return asyncio.run(read())


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    return [
        f"{name}.{field}: expected {value!r}, the API has {found[name][field]!r}"
        for name, record in expected.items()
        for field, value in record.items()
        if found[name][field] != value
    ]


def test_prefect_deploy_all_registers_what_the_code_declares(
    mlops_home: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    settings = Settings()
    with get_client(sync_client=True) as client:
        ensure_pools(client, settings)  # prefect deploy refuses a pool that does not exist
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect = Path(sys.executable).with_name("prefect")
    result = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"prefect deploy --all failed:\n{result.stdout}\n{result.stderr}"

    expected = summarize_code(build_deployments(settings))
    found = _registered(sorted(expected))
    assert not _differences(expected, found), "\n".join(_differences(expected, found))


def test_mlops_deploy_creates_pools_gpu_limit_and_deployments(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.workers.base import BaseJobConfiguration

    suffix = uuid.uuid4().hex[:8]
    local, gpu = f"local-{suffix}", f"gpu-{suffix}"
    monkeypatch.setenv("MLOPS_ORCHESTRATION__LOCAL_POOL", local)
    monkeypatch.setenv("MLOPS_ORCHESTRATION__GPU_POOL", gpu)
    monkeypatch.setenv("MLOPS_ORCHESTRATION__GPUS_PER_POOL", "2")

    result = runner.invoke(app, ["deploy"])
    assert result.exit_code == 0, result.output
    assert f"work pool {local}: created" in result.output
    assert f"work pool {gpu}: created" in result.output
    assert f"registered retrain/fraud_detector (pool {local})" in result.output

    with get_client(sync_client=True) as client:
        local_pool = client.read_work_pool(local)
        gpu_pool = client.read_work_pool(gpu)
        limit = client.read_global_concurrency_limit_by_name(gpu_limit_name(gpu))
    assert local_pool.type == "process"
    assert local_pool.base_job_template == job_template("process", local)
    assert gpu_pool.type == "docker"
    assert gpu_pool.base_job_template == job_template("docker", gpu)
    assert (limit.limit, limit.active) == (2, True)
    # what a worker of the GPU pool builds: the pool's name in the env, a deployment's env
    # merged over it
    config = asyncio.run(
        BaseJobConfiguration.from_template_and_values(
            gpu_pool.base_job_template, {"env": {"EXTRA": "1"}}
        )
    )
    assert config.env == {GPU_POOL_ENV: gpu, "EXTRA": "1"}

    expected = summarize_code(build_deployments(Settings()))
    found = _registered(sorted(expected))
    assert not _differences(expected, found), "\n".join(_differences(expected, found))

    # a second run updates the limit and leaves an existing pool of another type alone
    monkeypatch.setenv("MLOPS_ORCHESTRATION__GPUS_PER_POOL", "4")
    again = runner.invoke(app, ["deploy", "--pools-only", "--gpu-pool-type", "kubernetes"])
    assert again.exit_code == 0, again.output
    assert f"work pool {gpu}: exists (type docker, not kubernetes: left alone)" in again.output
    assert "registered" not in again.output
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(gpu_limit_name(gpu)).limit == 4


def test_mlops_deploy_creates_a_kubernetes_gpu_pool(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = f"k8s-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_ORCHESTRATION__GPU_POOL", gpu)

    result = runner.invoke(app, ["deploy", "--pools-only", "--gpu-pool-type", "kubernetes"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(gpu)
        limit = client.read_global_concurrency_limit_by_name(gpu_limit_name(gpu))
    assert pool.type == "kubernetes"
    assert pool.base_job_template == job_template("kubernetes", gpu)
    assert limit.limit == 1

    wrong = runner.invoke(app, ["deploy", "--gpu-pool-type", "slurm"])
    assert wrong.exit_code == 2
    assert "--gpu-pool-type" in wrong.output


def _event_runs(deployment_id: uuid.UUID) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return [run for run in runs if run.parameters.get("reason") != "schedule"]


def _emit_and_flush(event: str, model: str, payload: dict[str, Any]) -> None:
    from prefect.events.worker import EventsWorker

    emit(event, model_resource(model), payload)
    EventsWorker.drain_all(timeout=10)


def test_a_burst_of_events_starts_one_retraining_with_the_event(mlops_home: Path) -> None:
    settings = Settings()
    model = f"probe_{uuid.uuid4().hex[:8]}"  # its own resource id: no other test's events
    with get_client(sync_client=True) as client:
        ensure_pools(client, settings)
    deployment_id = retrain_deployment(model, settings).apply()
    payload = {"drift_share": 0.6, "drifted_columns": ["amount", "distance_km"]}

    runs: list[Any] = []
    deadline = time.monotonic() + 120
    while not runs and time.monotonic() < deadline:  # until the automation is loaded
        _emit_and_flush(MODEL_DRIFT_DETECTED, model, payload)
        time.sleep(2)
        runs = _event_runs(deployment_id)
    assert runs, "no flow run of the retrain deployment after drift-detected events"

    for _ in range(3):  # the rest of the burst, inside the cooldown
        _emit_and_flush(MODEL_PERFORMANCE_DEGRADED, model, {"live_accuracy": 0.5})
    time.sleep(8)
    runs = _event_runs(deployment_id)
    assert len(runs) == 1, f"{len(runs)} retrainings for one burst of events"
    assert runs[0].parameters == {
        "model_name": model,
        "reason": MODEL_DRIFT_DETECTED,
        "event_payload": payload,
    }


@pytest.fixture
def prefect_server_with_services(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A ``prefect server start`` of its own, services (the scheduler) included, on a free
    port with a fresh ``PREFECT_HOME``: the session's test harness runs only the services
    an ephemeral server runs, and the scheduler is not one of them. Yields its API URL and
    its log file."""
    import httpx

    from mlops.cli.server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-server-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",  # errors only, not each request
    }
    log_path = tmp_path / "prefect-server.log"
    prefect = Path(sys.executable).with_name("prefect")
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 45
        while True:
            assert server.poll() is None, (
                f"prefect server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}"
            )
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"prefect server not healthy in 45 s:\n{log_path.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        yield url, log_path
    finally:
        terminate(server, timeout_s=10)


def test_the_scheduler_creates_the_monitor_deployments_hourly_runs(
    mlops_home: Path, prefect_server_with_services: tuple[str, Path]
) -> None:
    """Regression: SQLAlchemy 2.1 broke Prefect 3.8.8's scheduler ("Can't evaluate bulk
    DML statement"), so deployments got no scheduled runs; sqlalchemy is pinned <2.1."""
    from zoneinfo import ZoneInfo

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments import MONITOR_CRON

    url, server_log = prefect_server_with_services
    settings = Settings()
    minute = int(MONITOR_CRON.split()[0])
    zone = ZoneInfo(settings.orchestration.timezone)
    with temporary_settings({PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            ensure_pools(client, settings)
        ids = {f"{d.flow_name}/{d.name}": d.apply() for d in build_deployments(settings)}
        monitor = ids["monitor/fraud_detector"]

        scheduled: list[Any] = []
        deadline = time.monotonic() + 30  # the recent-deployments loop runs every 5 s
        while not scheduled and time.monotonic() < deadline:
            time.sleep(1)
            with get_client(sync_client=True) as client:
                scheduled = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[monitor])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                        )
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=10,
                )
    assert scheduled, (
        "the scheduler made no SCHEDULED run of monitor/fraud_detector in 30 s; the "
        f"server's log ends:\n{server_log.read_text()[-4000:]}"
    )
    starts = sorted(run.expected_start_time.astimezone(zone) for run in scheduled)
    assert all((t.minute, t.second) == (minute, 0) for t in starts), starts
    assert starts[0] - datetime.now(zone) <= timedelta(hours=1)  # the next one, not a later
    assert all(run.auto_scheduled for run in scheduled)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(starts))
