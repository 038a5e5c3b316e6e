"""The local stack's specs, environment, pre-flight checks and supervisor.

The supervisor tests run real (small) processes: ``python -m http.server`` stands in for
a service, so starting, health checks, stopping and orphan hunting are the real thing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops.cli.server import free_port
from mlops.cli.stack import stack_app
from mlops.settings import Settings
from mlops.stack import preflight
from mlops.stack.spec import (
    HealthCheck,
    ServiceSpec,
    Stack,
    StackError,
    StackOptions,
    build_stack,
    masked,
    postgres_url,
    state_path,
)
from mlops.stack.state import (
    group_members,
    is_alive,
    proc_start,
    read_state,
    report,
    write_state,
)
from mlops.stack.supervisor import Supervisor

runner = CliRunner()


def _options(**overrides: object) -> StackOptions:
    ports = {"prefect_port": 14200, "mlflow_port": 15000, "app_port": 18000, "console_port": 18501}
    return StackOptions(**{**ports, **overrides})  # type: ignore[arg-type]


# --- specs and the shared environment ----------------------------------------------------
def test_default_stack_runs_five_services_on_embedded_backends(mlops_home: Path) -> None:
    stack = build_stack(Settings(), _options())

    assert [s.name for s in stack.services] == ["prefect", "mlflow", "runner", "app", "console"]
    prefect, mlflow, run, app, console = stack.services
    assert prefect.command[-5:] == ["start", "--host", "127.0.0.1", "--port", "14200"]
    assert prefect.health == HealthCheck("http", "http://127.0.0.1:14200/api/health")
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in {**stack.env, **prefect.env}
    store = mlflow.command[mlflow.command.index("--backend-store-uri") + 1]
    assert store == f"sqlite:///{mlops_home.resolve() / 'mlflow.db'}"
    assert mlflow.command[mlflow.command.index("--artifacts-destination") + 1] == str(
        mlops_home.resolve() / "mlartifacts"
    )
    assert mlflow.health.url == "http://127.0.0.1:15000/health"
    assert run.command[-2:] == ["deploy", "--serve"]
    assert run.health == HealthCheck("deployments", "http://127.0.0.1:14200/api")
    assert run.needs == ("prefect",) and run.stop_signal == "SIGINT" and run.port is None
    assert app.command[app.command.index("--port") + 1] == "18000"
    assert app.needs == ("prefect", "mlflow")
    assert console.health.url == "http://127.0.0.1:18501/_stcore/health"
    assert console.command[4].endswith("ui/console.py")
    for spec in stack.services:
        assert spec.log_path == mlops_home.resolve() / "logs" / f"{spec.name}.log"
    assert stack.databases == []
    assert stack.state_path == mlops_home.resolve() / "stack" / "state.json"


def test_every_child_resolves_the_same_settings(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings read in a child's environment point at the stack's servers and backends."""
    stack = build_stack(
        Settings(),
        _options(
            postgres="postgresql://postgres:s3cret@db.example:5433/ignored",
            redis="redis://127.0.0.1:6379/7",
            database_prefix="t1_",
        ),
    )
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    child = Settings()

    assert child.home == mlops_home.resolve()
    assert child.prefect.api_url == "http://127.0.0.1:14200/api"
    assert child.prefect_env()["PREFECT_API_URL"] == "http://127.0.0.1:14200/api"
    assert child.prefect_env()["PREFECT_HOME"] == str(mlops_home.resolve() / "prefect")
    assert child.tracking_uri == child.registry_uri == "http://127.0.0.1:15000"
    assert child.online_store.type == "redis"
    assert child.online_store.url == "redis://127.0.0.1:6379/7"
    assert child.request_log.url == (
        "postgresql+psycopg://postgres:s3cret@db.example:5433/t1_mlops_requests"
    )
    assert child.serving.port == 18000
    assert stack.databases == ["t1_prefect", "t1_mlflow", "t1_mlops_requests"]
    prefect = stack.service("prefect")
    assert prefect.env["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://postgres:s3cret@db.example:5433/t1_prefect"
    )
    mlflow = stack.service("mlflow")
    store = mlflow.command[mlflow.command.index("--backend-store-uri") + 1]
    assert store == "postgresql+psycopg://postgres:s3cret@db.example:5433/t1_mlflow"
    assert "s3cret" not in json.dumps(stack.backends)
    assert stack.backends["online store"] == "redis redis://127.0.0.1:6379/7"


def test_postgres_urls_and_masking() -> None:
    assert (
        postgres_url("postgresql://u:p@h:1/db", "mlflow", driver="psycopg")
        == "postgresql+psycopg://u:p@h:1/mlflow"
    )
    assert masked("postgresql+psycopg://u:p@h:1/x") == "postgresql+psycopg://u:***@h:1/x"
    assert masked("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert masked("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(StackError, match="must be a PostgreSQL URL"):
        postgres_url("mysql://u@h/db", "x", driver="psycopg")
    with pytest.raises(StackError, match="not a database URL"):
        postgres_url("not a url", "x", driver="psycopg")


# --- pre-flight ----------------------------------------------------------------------------
@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_taken_port_is_refused_naming_the_service_and_option(
    mlops_home: Path, taken_port: int
) -> None:
    stack = build_stack(Settings(), _options(mlflow_port=taken_port, prefect_port=free_port()))
    with pytest.raises(StackError) as caught:
        preflight.check_ports(stack, "127.0.0.1")
    message = str(caught.value)
    assert f"port {taken_port}" in message and "mlflow" in message
    assert "--mlflow-port" in message
    assert caught.value.service == "mlflow"


def test_two_services_on_one_port_are_refused(mlops_home: Path) -> None:
    port = free_port()
    stack = build_stack(
        Settings(),
        _options(
            prefect_port=free_port(), mlflow_port=free_port(), app_port=port, console_port=port
        ),
    )
    with pytest.raises(StackError, match=f"app and console would both use port {port}"):
        preflight.check_ports(stack, "127.0.0.1")


def test_free_ports_pass(mlops_home: Path) -> None:
    ports = {f"{name}_port": free_port() for name in ("prefect", "mlflow", "app", "console")}
    preflight.check_ports(build_stack(Settings(), _options(**ports)), "127.0.0.1")


def test_up_refuses_a_taken_port_before_starting_anything(
    mlops_home: Path, taken_port: int
) -> None:
    result = runner.invoke(
        stack_app, ["up", "--prefect-port", str(taken_port), "--mlflow-port", str(free_port())]
    )
    assert result.exit_code == 1
    assert f"port {taken_port}" in result.output and "--prefect-port" in result.output
    assert not state_path(mlops_home.resolve()).exists()


def test_unreachable_redis_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StackError, match=f"Redis at redis://127.0.0.1:{port}/0 is not reachable"):
        preflight.check_redis(f"redis://127.0.0.1:{port}/0")


def test_a_second_stack_from_the_same_home_is_refused(tmp_path: Path) -> None:
    me = os.getpid()
    write_state(
        state_path(tmp_path),
        {"status": "running", "supervisor_pid": me, "supervisor_start": proc_start(me)},
    )
    with pytest.raises(StackError, match=f"a stack already runs from {tmp_path}"):
        preflight.check_not_running(tmp_path)
    # the same pid started at another time is another process: not a running stack
    write_state(
        state_path(tmp_path),
        {"status": "running", "supervisor_pid": me, "supervisor_start": -1, "services": {}},
    )
    preflight.check_not_running(tmp_path)


def test_processes_left_by_a_dead_stack_are_named_with_how_to_stop_them(tmp_path: Path) -> None:
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        write_state(
            state_path(tmp_path),
            {
                "status": "running",
                "supervisor_pid": leftover.pid,
                "supervisor_start": -1,  # that mlops up is gone
                "services": {"mlflow": {"pid": leftover.pid, "proc_start": -1}},
            },
        )
        with pytest.raises(StackError) as caught:
            preflight.check_not_running(tmp_path)
        assert f"mlflow (pids {leftover.pid})" in str(caught.value)
        assert f"kill -- -{leftover.pid}" in str(caught.value)
    finally:
        leftover.kill()
        leftover.wait()
    preflight.check_not_running(tmp_path)


# --- the supervisor, on real processes ----------------------------------------------------
def _http_service(
    tmp_path: Path, name: str, *, needs: tuple[str, ...] = (), script: str | None = None
) -> ServiceSpec:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    if script is not None:
        command = [sys.executable, "-c", textwrap.dedent(script), str(port)]
    return ServiceSpec(
        name=name,
        command=command,
        url=f"http://127.0.0.1:{port}",
        health=HealthCheck("http", f"http://127.0.0.1:{port}/"),
        log_path=tmp_path / "logs" / f"{name}.log",
        port=port,
        needs=needs,
    )


STUBBORN = """
    import http.server, signal, subprocess, sys
    # a grandchild that ignores SIGTERM: only the group kill ends it
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = http.server.SimpleHTTPRequestHandler
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
    server.serve_forever()
"""


def test_supervisor_starts_in_order_records_state_and_stops_without_orphans(
    tmp_path: Path,
) -> None:
    first = _http_service(tmp_path, "first")
    second = _http_service(tmp_path, "second", needs=("first",), script=STUBBORN)
    stack = Stack(home=tmp_path, services=[first, second], env={"STACK_TEST": "1"})
    order: list[str] = []
    stopped: list[str] = []
    with Supervisor(
        stack,
        startup_timeout_s=30,
        grace_s=1.0,
        poll_s=0.1,
        on_healthy=lambda spec, _: order.append(spec.name),
        on_stopped=lambda spec, _code, _seconds: stopped.append(spec.name),
    ) as supervisor:
        health = supervisor.start()
        assert order == ["first", "second"]
        assert health["second"].ok
        state = read_state(tmp_path)
        assert state is not None and state["status"] == "running"
        pids = {name: svc["pid"] for name, svc in state["services"].items()}
        assert state["services"]["second"]["url"] == second.url
        assert state["services"]["second"]["log"] == str(second.log_path)
        members = group_members(pids["second"])
        assert len(members) == 2  # the service and its stubborn child
        live = report(tmp_path)
        assert live.healthy and [s.state for s in live.services] == ["healthy", "healthy"]
    assert stopped == ["second", "first"]
    for pid in [*pids.values(), *members]:
        assert not is_alive(pid), f"process {pid} outlived the stack"
    after = report(tmp_path)
    assert after.status == "stopped" and not after.healthy
    assert [s.state for s in after.services] == ["stopped", "stopped"]
    assert "--- " in first.log_path.read_text()  # the start header


def test_a_service_that_exits_while_starting_names_itself_and_its_log(tmp_path: Path) -> None:
    good = _http_service(tmp_path, "good")
    bad = ServiceSpec(
        name="broken",
        command=[sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
        url="http://127.0.0.1:1",
        health=HealthCheck("http", "http://127.0.0.1:1/"),
        log_path=tmp_path / "logs" / "broken.log",
    )
    stack = Stack(home=tmp_path, services=[good, bad], env={})
    with pytest.raises(StackError) as caught, Supervisor(stack, poll_s=0.1) as supervisor:
        supervisor.start()
    assert "broken exited with code 3 while starting" in str(caught.value)
    assert caught.value.log_path == bad.log_path
    assert "boom: bad config" in bad.log_path.read_text()
    after = report(tmp_path)
    assert after.status == "failed" and "broken exited" in (after.error or "")
    assert all(not s.alive for s in after.services)


def test_a_service_never_healthy_times_out_naming_its_health_url(tmp_path: Path) -> None:
    silent = ServiceSpec(
        name="silent",
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        url="http://127.0.0.1:1",
        health=HealthCheck("http", f"http://127.0.0.1:{free_port()}/health"),
        log_path=tmp_path / "logs" / "silent.log",
    )
    stack = Stack(home=tmp_path, services=[silent], env={})
    started = time.monotonic()
    with (
        pytest.raises(StackError, match=r"silent was not healthy 1s after it started") as caught,
        Supervisor(stack, startup_timeout_s=1, grace_s=2, poll_s=0.1) as supervisor,
    ):
        supervisor.start()
    assert "connection refused" in str(caught.value) and str(silent.log_path) in str(caught.value)
    assert time.monotonic() - started < 10
    assert not is_alive(report(tmp_path).services[0].pid)


def test_wait_reports_a_service_that_dies_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    service = _http_service(tmp_path, "web")
    stack = Stack(home=tmp_path, services=[service], env={})
    with (
        pytest.raises(StackError, match="web exited with code -9; see its log"),
        Supervisor(stack, poll_s=0.1) as supervisor,
    ):
        supervisor.start()
        os.kill(supervisor.running["web"].proc.pid, signal.SIGKILL)
        supervisor.wait()

    with Supervisor(stack, poll_s=0.1) as supervisor:
        supervisor.start()
        pid = supervisor.running["web"].proc.pid
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <mlops up>` would
            supervisor.wait()
    assert not is_alive(pid)
    assert report(tmp_path).status == "stopped"


# --- the commands --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["up", "status"])
def test_commands_have_help_with_an_example(command: str) -> None:
    result = runner.invoke(stack_app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_status_without_a_stack_says_so(mlops_home: Path) -> None:
    result = runner.invoke(stack_app, ["status"])
    assert result.exit_code == 1
    assert "no stack has been started from" in result.output
    result = runner.invoke(stack_app, ["status", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["status"] == "not started"


ORPHAN_CHECK = """
import sys, time
from pathlib import Path
from mlops.stack.spec import HealthCheck, ServiceSpec, Stack
from mlops.stack.supervisor import Supervisor
home, port = Path(sys.argv[1]), sys.argv[2]
spec = ServiceSpec(
    name="web",
    command=[sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"],
    url=f"http://127.0.0.1:{port}",
    health=HealthCheck("http", f"http://127.0.0.1:{port}/"),
    log_path=home / "web.log",
)
with Supervisor(Stack(home=home, services=[spec], env={}), poll_s=0.1) as supervisor:
    supervisor.start()
    print(supervisor.running["web"].proc.pid, flush=True)
    supervisor.wait()
"""


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """``kill -9`` of ``mlops up`` leaves no service behind (PR_SET_PDEATHSIG, Linux)."""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_CHECK, str(tmp_path), str(free_port())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert supervisor.stdout is not None
    child = int(supervisor.stdout.readline())
    assert is_alive(child)
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 10
    while is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_alive(child)
    assert report(tmp_path).status == "supervisor gone"
