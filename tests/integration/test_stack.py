"""``mlops up`` for real: every service started, health-checked, used, then stopped.

``up`` runs in a subprocess (as a person runs it) on free ports and a temporary home,
once on the embedded defaults and once on the real Postgres and Redis servers. The
tests read ``status``, talk to each service, render the console's first page against
the stack's MLflow registry and Prefect API, then send SIGINT and check that every
process the stack started is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from mlops.cli.server import free_port
from mlops.cli.stack import stack_app
from mlops.registry import configure_mlflow
from mlops.settings import Settings
from mlops.stack.spec import StackOptions, build_stack
from mlops.stack.state import group_members, is_alive, read_state, report
from tests.conftest import PG_SERVER
from tests.integration._registry import register_version

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["prefect", "mlflow", "runner", "app", "console"]
SERVED = {
    "materialize/card_transactions",
    "train/fraud_detector",
    "evaluate/fraud_detector",
    "monitor/fraud_detector",
    "retrain/fraud_detector",
}
STARTUP_S = 170.0
runner = CliRunner()


@dataclass
class Up:
    """A running ``mlops up``: its process, home, ports and the pids of everything it runs."""

    proc: subprocess.Popen[bytes]
    home: Path
    ports: dict[str, int]
    output: Path
    extra: tuple[str, ...]
    pids: set[int] = field(default_factory=set)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self) -> dict[str, str]:
        """The environment ``up`` gives its children (for in-process checks)."""
        args = dict(zip(self.extra[::2], self.extra[1::2], strict=True))
        options = StackOptions(
            prefect_port=self.ports["prefect"],
            mlflow_port=self.ports["mlflow"],
            app_port=self.ports["app"],
            console_port=self.ports["console"],
            postgres=args.get("--postgres"),
            database_prefix=args.get("--database-prefix", ""),
            redis=args.get("--redis"),
        )
        return build_stack(Settings(home=self.home), options).env


def _clean_env() -> dict[str, str]:
    """This process's environment less the platform's and Prefect's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLOPS_", "PREFECT_", "MLFLOW_")) or key.startswith("MLOPS_TEST_")
    }
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["COLUMNS"] = "200"  # the tables on one line each in up.out
    return env


def launch(home: Path, *extra: str) -> Up:
    """Start ``python -m mlops.cli.stack up`` on free ports (not waiting for it)."""
    home.parent.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("prefect", "mlflow", "app", "console")}
    output = home.parent / "up.out"
    command = [
        sys.executable,
        "-m",
        "mlops.cli.stack",
        "up",
        "--home",
        str(home),
        *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
        "--timeout",
        str(int(STARTUP_S)),
        "--grace",
        "10",
        *extra,
    ]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=home.parent, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT
        )
    return Up(proc, home, ports, output, extra)


def wait_healthy(up: Up, deadline: float) -> None:
    """Until ``status`` sees every service healthy; then note every pid the stack runs."""
    while True:
        if up.proc.poll() is not None:
            pytest.fail(f"mlops up exited with {up.proc.returncode}:\n{up.output.read_text()}")
        if report(up.home).healthy:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the stack was not healthy in time:\n{up.output.read_text()}")
        time.sleep(1)
    state = read_state(up.home)
    assert state is not None
    up.pids = {m for svc in state["services"].values() for m in group_members(svc["pid"])}


def shutdown(up: Up) -> None:
    if up.proc.poll() is None:
        up.proc.send_signal(signal.SIGINT)
        try:
            up.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            up.proc.wait()


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

    page = AppTest.from_file(str(ROOT / "ui" / "pages" / "models.py"), default_timeout=60)
    page.run()
    assert not page.exception and not page.error
    table = page.dataframe[0].value
    row = table[table["model"] == "fraud_detector"].iloc[0]
    assert (int(row["version"]), row["aliases"]) == (int(version), "challenger")

    page.number_input[0].set_value(1)  # epochs
    page.button[0].click().run()
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
