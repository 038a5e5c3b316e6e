"""``mlops up`` for real: every service started, health-checked, used, then stopped.

``up`` runs in a subprocess (as a person runs it) on free ports and a temporary home,
once on the embedded defaults and once on the real Postgres and Redis servers. The
tests read ``status``, talk to each service, render the console's first page against
the stack's MLflow registry and Prefect API, then send SIGINT and check that every
process the stack started is gone.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from mlops.cli.stack import stack_app
from mlops.registry import configure_mlflow, mlflow_client
from mlops.settings import Settings
from mlops.stack.state import is_alive, read_state
from mlops.tags import RunTags
from tests._stack import STARTUP_S, Up, launch, shutdown, wait_healthy
from tests.conftest import PG_SERVER
from tests.integration._registry import register_version
from ui.auth import login_state

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["prefect", "mlflow", "runner", "app", "console"]
SERVED = {
    "materialize/card_transactions",
    "train/fraud_detector",
    "evaluate/fraud_detector",
    "monitor/fraud_detector",
    "retrain/fraud_detector",
    "cleanup/crashed",
}
runner = CliRunner()


@pytest.fixture(scope="module")
def stacks(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin: sa.Engine, redis_url: str
) -> Iterator[dict[str, Up]]:
    """Two stacks started at once (the machine's cores are shared: each waits on others):
    ``embedded`` on the defaults, ``postgres`` on Postgres (fresh databases, dropped
    after) and Redis."""
    root = tmp_path_factory.mktemp("stacks")
    prefix = f"stack_{uuid.uuid4().hex[:8]}_"
    extra = ("--postgres", PG_SERVER, "--database-prefix", prefix, "--redis", redis_url)
    ups = {"embedded": launch(root / "embedded" / "home")}
    try:
        ups["postgres"] = launch(root / "postgres" / "home", *extra)
        deadline = time.monotonic() + STARTUP_S + 30
        for up in ups.values():
            wait_healthy(up, deadline)
        yield ups
    finally:
        for up in ups.values():
            shutdown(up)
        with postgres_admin.connect() as conn:
            for name in ("prefect", "mlflow", "mlops_requests"):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}{name}" WITH (FORCE)'))


def _status(home: Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(stack_app, ["status", "--home", str(home), "--json"])
    return result.exit_code, json.loads(result.output)


def _deployments(api: str) -> set[str]:
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
    found = httpx.post(f"{api}/deployments/filter", json={}).json()
    return {f"{flows[d['flow_id']]}/{d['name']}" for d in found}


def _query(database: str, sql: str) -> list[Any]:
    engine = sa.create_engine(f"{PG_SERVER}/{database}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).scalars())
    finally:
        engine.dispose()


def _stop_and_check_nothing_is_left(up: Up) -> None:
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=90) == 0, up.output.read_text()
    output = up.output.read_text()
    assert "stack stopped" in output
    for name in SERVICES:
        assert f"stopped {name}" in output
    left = [pid for pid in up.pids if is_alive(pid)]
    assert not left, f"processes outlived the stack: {left}"
    code, status = _status(up.home)
    assert code == 1 and status["status"] == "stopped"
    assert [s["state"] for s in status["services"]] == ["stopped"] * len(SERVICES)


def test_a_run_killed_without_its_hooks_is_closed_by_the_cleanup_deployment(
    stacks: dict[str, Up], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes or Docker worker marks a killed run Crashed and runs no hook: the
    Crashed event must start ``cleanup/crashed`` on the stack's runner, which fails the
    MLflow run the dead run left RUNNING."""
    up = stacks["embedded"]  # before its test stops it
    for key, value in up.env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    api = f"{up.url('prefect')}/api"
    # a monitor run (the Training page, checked below, follows the newest train run)
    flow_id = httpx.post(f"{api}/flows/", json={"name": "monitor"}).json()["id"]
    killed = httpx.post(
        f"{api}/flow_runs/", json={"flow_id": flow_id, "state": {"type": "RUNNING"}}
    ).json()["id"]
    tracking = mlflow_client(settings)
    left = tracking.create_run(
        configure_mlflow(settings),
        tags={RunTags.FLOW_RUN_ID: killed, RunTags.ROOT_FLOW_RUN_ID: killed},
    ).info.run_id
    crashed = {"type": "CRASHED", "name": "Crashed", "message": "pod killed (exit 137)"}
    answer = httpx.post(
        f"{api}/flow_runs/{killed}/set_state", json={"state": crashed, "force": True}
    )
    assert answer.json()["status"] == "ACCEPT", answer.text

    deadline = time.monotonic() + 180
    while tracking.get_run(left).info.status == "RUNNING":
        assert time.monotonic() < deadline, (up.home / "logs" / "runner.log").read_text()[-5000:]
        time.sleep(1)
    run = tracking.get_run(left)
    assert run.info.status == "FAILED"
    assert run.data.tags[RunTags.TERMINATED_BY] == "prefect:Crashed"
    cleanups = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["cleanup"]}}},
    ).json()
    assert [r["parameters"]["flow_run_id"] for r in cleanups] == [f"prefect.flow-run.{killed}"]


def test_up_runs_the_platform_on_embedded_defaults_and_stops_cleanly(
    stacks: dict[str, Up], mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = stacks["embedded"]
    code, status = _status(up.home)
    assert code == 0 and status["status"] == "running" and status["healthy"]
    services = {s["name"]: s for s in status["services"]}
    assert sorted(services) == sorted(SERVICES)
    assert all(s["state"] == "healthy" for s in services.values())
    assert services["prefect"]["url"] == up.url("prefect")
    assert services["mlflow"]["url"] == up.url("mlflow")
    assert services["app"]["url"] == up.url("app")
    assert services["console"]["url"] == up.url("console")
    assert services["app"]["detail"] == "no champion yet"
    assert set(services["runner"]["deployments"]) >= SERVED
    for name in SERVICES:
        assert Path(services[name]["log"]) == up.home.resolve() / "logs" / f"{name}.log"
    assert "sqlite" in status["backends"]["prefect database"]

    api = f"{up.url('prefect')}/api"
    assert _deployments(api) >= SERVED
    assert httpx.get(f"{up.url('app')}/health").status_code == 200
    assert httpx.get(f"{up.url('app')}/ready").status_code == 503
    console = httpx.get(f"{up.url('console')}/_stcore/health")
    assert console.status_code == 200 and console.text == "ok"

    # a model version logged and registered through the MLflow server (artifacts too)
    for key, value in up.env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    experiment_id = configure_mlflow(settings)
    version = register_version(
        tracking_uri=settings.tracking_uri,
        experiment_id=experiment_id,
        name="fraud_detector",
        alias="challenger",
    )
    assert list((up.home / "mlartifacts").rglob("model.onnx")), "artifacts not served"

    login = login_state(settings.serving.api_token.get_secret_value(), settings)
    page = AppTest.from_file(str(ROOT / "ui" / "pages" / "models.py"), default_timeout=60)
    for key, value in login.items():
        page.session_state[key] = value
    page.run()
    assert not page.exception and not page.error
    table = page.dataframe[0].value
    row = table[table["model"] == "fraud_detector"].iloc[0]
    assert (int(row["version"]), row["aliases"]) == (int(version), "challenger")

    page = AppTest.from_file(str(ROOT / "ui" / "pages" / "training.py"), default_timeout=60)
    for key, value in login.items():
        page.session_state[key] = value
    page.run()
    assert not page.exception and not page.error
    page.number_input[0].set_value(1)  # epochs
    page.button(key="FormSubmitter:train-Start training").click().run()
    assert not page.error, page.error[0].value if page.error else ""
    message = page.success[0].value
    run_id = message.split("flow run ")[1].split(" ")[0]
    flow_run = httpx.get(f"{api}/flow_runs/{run_id}").json()
    deployment = httpx.get(f"{api}/deployments/{flow_run['deployment_id']}").json()
    assert deployment["name"] == "fraud_detector"
    assert flow_run["parameters"]["epochs"] == 1

    _stop_and_check_nothing_is_left(up)


def test_up_on_postgres_and_redis(stacks: dict[str, Up], redis_url: str) -> None:
    up = stacks["postgres"]
    prefix = up.extra[up.extra.index("--database-prefix") + 1]
    databases = [f"{prefix}prefect", f"{prefix}mlflow", f"{prefix}mlops_requests"]
    assert f"created databases {', '.join(databases)}" in up.output.read_text()
    code, status = _status(up.home)
    assert code == 0 and status["healthy"]
    backends = status["backends"]
    assert backends["prefect database"].endswith(f"/{prefix}prefect")
    assert backends["online store"] == f"redis {redis_url}"
    assert _deployments(f"{up.url('prefect')}/api") >= SERVED

    # the servers keep their state in Postgres: Prefect's deployments, MLflow's tables
    names = _query(f"{prefix}prefect", "SELECT name FROM deployment")
    assert {"fraud_detector", "card_transactions"} <= set(names)
    assert _query(f"{prefix}mlflow", "SELECT name FROM experiments") == ["Default"]

    # the app sees the Redis online store and the Postgres request log
    state = read_state(up.home)
    assert state is not None
    app_pid = state["services"]["app"]["pid"]
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{app_pid}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ["MLOPS_ONLINE_STORE__TYPE"] == "redis"
    assert environ["MLOPS_ONLINE_STORE__URL"] == redis_url
    assert environ["MLOPS_REQUEST_LOG__URL"].endswith(f"/{prefix}mlops_requests")
    assert httpx.get(f"{up.url('app')}/health").status_code == 200

    _stop_and_check_nothing_is_left(up)
