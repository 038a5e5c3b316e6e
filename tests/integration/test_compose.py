"""The compose stack's own commands, run as local processes, become healthy.

There is no Docker engine here, so this runs what each container would run: the
command, environment and healthcheck of every service built from infra/Dockerfile, as
``docker compose config`` resolves them, with the image's ENV underneath. Only the
places change: service names become 127.0.0.1 (the real Postgres and Redis of the
tests, fresh databases made by the stack's own init script), container ports become
free ports, volumes become folders of the test (shared between services as the named
volumes are), and /opt/mlops is this checkout. Services start in the order their
``depends_on`` conditions allow, and each counts as healthy when its own healthcheck
command passes (a one-shot when it exits 0). Then the stack is used: the deployments
and both work pools are in Prefect with a worker polling each, MLflow answers its
service name and refuses others, the app logs to Postgres and exports its metrics.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from mlops.cli.server import free_port
from tests._compose import (
    ROOT,
    VENV_BIN,
    healthcheck_command,
    image_env,
    is_one_shot,
    is_python_service,
    listening_port,
    resolve,
    write_env_file,
)
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.integration

DEADLINE_S = 180.0
HEALTH_EVERY_S = 1.0
REDIS_PASSWORD = "composetestredis0"
PORTED = ("prefect", "mlflow", "app", "console", "worker", "gpu-worker")
DEPLOYMENTS = {
    "materialize/card_transactions": "local",
    "train/fraud_detector": "local",
    "train/fraud_detector-gpu": "gpu",
    "evaluate/fraud_detector": "local",
    "monitor/fraud_detector": "local",
    "retrain/fraud_detector": "local",
    "cleanup/crashed": "local",
}


@dataclass
class Local:
    """One compose service as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    one_shot: bool
    needs: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    state: str = "waiting"  # waiting, started, healthy, completed
    checked_at: float = 0.0
    last_check: str = ""
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no output)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Translation:
    """Container names, ports and paths → this machine's."""

    def __init__(self, config: dict[str, Any], root: Path, ports: dict[str, int]) -> None:
        self.config = config
        self.root = root
        self.ports = ports
        services = config["services"]
        self.container_ports = {name: listening_port(name, services[name]) for name in services}
        self.pairs = [
            (f"redis://:{REDIS_PASSWORD}@redis:6379", "redis://127.0.0.1:6379"),
            ("@postgres:5432", "@127.0.0.1:5432"),
            *(
                (f"//{name}:{self.container_ports[name]}", f"//127.0.0.1:{ports[name]}")
                for name in ("prefect", "mlflow", "app", "console")
            ),
            ("0.0.0.0", "127.0.0.1"),
            ("/opt/mlops/", f"{ROOT}/"),
        ]

    def paths(self, name: str) -> dict[str, Path]:
        """The service's volumes (shared, by volume name) and its container's own folders."""
        own = self.root / "containers" / name
        mapping = {"/home/mlops": own / "home", "/data": own / "data", "/mlartifacts": own / "art"}
        for volume in self.config["services"][name].get("volumes") or []:
            if volume["type"] == "volume":
                mapping[volume["target"]] = self.root / "volumes" / volume["source"]
        for path in mapping.values():
            path.mkdir(parents=True, exist_ok=True)
        return mapping

    def text(self, name: str, value: str) -> str:
        for old, new in self.pairs:
            value = value.replace(old, new)
        port, local = self.container_ports.get(name), self.ports.get(name)
        if port and local:
            value = value.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{local}/")
        for target, path in sorted(self.paths(name).items(), key=lambda kv: -len(kv[0])):
            if value == target or value.startswith(target + "/"):
                return str(path) + value[len(target) :]
        return value

    def argv(self, name: str, argv: list[str]) -> list[str]:
        out = [self.text(name, str(token)) for token in argv]
        port, local = self.container_ports.get(name), self.ports.get(name)
        for index, token in enumerate(out[:-1]):
            if token in ("--port", "--server.port") and port and out[index + 1] == str(port):
                out[index + 1] = str(local)
        return out

    def env(self, name: str, values: dict[str, str]) -> dict[str, str]:
        env = {key: self.text(name, str(value)) for key, value in values.items()}
        if "PREFECT_WORKER_WEBSERVER_PORT" in env:
            env["PREFECT_WORKER_WEBSERVER_PORT"] = str(self.ports[name])
        return env


def _base_env(home: Path) -> dict[str, str]:
    """What a container starts from: no variables of this test process's."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
    }


def _locals(config: dict[str, Any], translation: Translation, root: Path) -> list[Local]:
    image = {k: v for k, v in image_env().items() if k not in ("PATH", "VIRTUAL_ENV")}
    found = []
    for name, service in config["services"].items():
        if not is_python_service(service):
            continue
        home = translation.paths(name)["/home/mlops"]
        env = _base_env(home)
        env.update(translation.env(name, image))
        env.update(translation.env(name, service.get("environment") or {}))
        health = healthcheck_command(service)
        found.append(
            Local(
                name=name,
                argv=translation.argv(name, [str(a) for a in service["command"]]),
                env=env,
                health=translation.argv(name, health) if health else None,
                one_shot=is_one_shot(name, config),
                needs={dep: c["condition"] for dep, c in (service.get("depends_on") or {}).items()},
                log=root / "logs" / f"{name}.log",
                port=translation.ports.get(name),
            )
        )
    return found


def _ready(local: Local, states: dict[str, str]) -> bool:
    for dependency, condition in local.needs.items():
        wanted = "completed" if condition == "service_completed_successfully" else "healthy"
        if states.get(dependency) != wanted:
            return False
    return True


def _start(local: Local) -> None:
    local.log.parent.mkdir(parents=True, exist_ok=True)
    with local.log.open("wb") as out:
        local.proc = subprocess.Popen(
            local.argv,
            cwd=ROOT,
            env=local.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with everything it starts
        )
    local.state = "started"


def _healthy(argv: list[str], env: dict[str, str]) -> tuple[bool, str]:
    try:
        result = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return False, "healthcheck timed out"
    return result.returncode == 0, (result.stdout + result.stderr).strip()[-300:]


def _stop(local: Local) -> None:
    proc = local.proc
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # children of the group (uvicorn, flow runs)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Stack:
    locals: dict[str, Local]
    config: dict[str, Any]
    databases: dict[str, str]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.locals[name].port}"


def _run_init_script(postgres_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        **{k: v for k, v in postgres_env.items() if k != "POSTGRES_PASSWORD"},
        "POSTGRES_DB": "postgres",
    }
    return subprocess.run(
        ["sh", str(ROOT / "infra" / "postgres" / "init-databases.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin: sa.Engine, redis_url: str
) -> Iterator[Stack]:
    assert redis_url.startswith("redis://127.0.0.1:6379")
    root = tmp_path_factory.mktemp("compose")
    prefix = f"compose_{uuid.uuid4().hex[:8]}_"
    names = {
        key: f"{prefix}{default}"
        for key, default in (
            ("PREFECT_DB", "prefect"),
            ("MLFLOW_DB", "mlflow"),
            ("REQUEST_LOG_DB", "requests"),
            ("CATALOG_DB", "catalog"),
        )
    }
    user = sa.engine.make_url(PG_SERVER).username or "postgres"
    ports = {name: free_port() for name in PORTED}
    env_file = root / ".env"
    write_env_file(
        env_file,
        POSTGRES_USER=user,
        REDIS_PASSWORD=REDIS_PASSWORD,
        PREFECT_PORT=str(ports["prefect"]),
        MLFLOW_PORT=str(ports["mlflow"]),
        **names,
    )
    config = resolve(env_file)
    translation = Translation(config, root, ports)
    locals_ = {local.name: local for local in _locals(config, translation, root)}
    assert set(locals_) == {
        "prefect",
        "mlflow",
        "deployments",
        "worker",
        "gpu-worker",
        "app",
        "console",
    }
    try:
        # postgres: the stack's init script makes the databases (twice: it is idempotent)
        first = _run_init_script(config["services"]["postgres"]["environment"])
        assert first.returncode == 0, first.stderr
        again = _run_init_script(config["services"]["postgres"]["environment"])
        assert again.returncode == 0 and again.stdout.count(" exists") == 4, again.stdout
        states = {}
        for name in ("postgres", "redis"):  # their healthchecks, against the local servers
            argv = healthcheck_command(config["services"][name])
            assert argv
            ok, detail = _healthy(
                argv,
                {
                    "PATH": "/usr/bin:/bin",
                    **translation.env(name, config["services"][name].get("environment") or {}),
                },
            )
            assert ok, f"{name}'s healthcheck fails on the local server: {detail}"
            states[name] = "healthy"
        _run_until_healthy(locals_, states)
        yield Stack(locals_, config, names)
    finally:
        for local in reversed(list(locals_.values())):
            _stop(local)
        with postgres_admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run_until_healthy(locals_: dict[str, Local], states: dict[str, str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for local in locals_.values():
            states[local.name] = local.state
        for local in locals_.values():
            if local.state == "waiting" and _ready(local, states):
                _start(local)
            if local.state != "started":
                continue
            assert local.proc is not None
            code = local.proc.poll()
            if local.one_shot:
                if code is not None:
                    assert code == 0, f"{local.name} exited {code}:\n{local.tail()}"
                    local.state = "completed"
                continue
            assert code is None, f"{local.name} exited {code}:\n{local.tail()}"
            now = time.monotonic()
            if local.health and now - local.checked_at >= HEALTH_EVERY_S:
                local.checked_at = now
                ok, local.last_check = _healthy(local.health, local.env)
                if ok:
                    local.state = "healthy"
        if all(local.state in ("healthy", "completed") for local in locals_.values()):
            return
        if time.monotonic() > deadline:
            report = "\n\n".join(
                f"== {local.name}: {local.state} ({local.last_check})\n{local.tail(25)}"
                for local in locals_.values()
                if local.state not in ("healthy", "completed")
            )
            pytest.fail(f"the stack was not healthy in {DEADLINE_S:.0f} s:\n{report}")
        time.sleep(0.3)


def test_the_init_script_made_the_databases_the_services_use(
    stack: Stack, postgres_admin: sa.Engine
) -> None:
    with postgres_admin.connect() as conn:
        found = set(
            conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"),
                {"names": list(stack.databases.values())},
            ).scalars()
        )
    assert found == set(stack.databases.values())
    request_log = stack.locals["app"].env["MLOPS_REQUEST_LOG__URL"]
    assert request_log.endswith("/" + stack.databases["REQUEST_LOG_DB"])
    engine = sa.create_engine(request_log)
    try:
        with engine.connect() as conn:  # the app migrated its database at start
            tables = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {"prediction_log", "monitoring_runs"} <= tables


def test_every_deployment_and_both_pools_are_in_prefect_with_a_worker_each(stack: Stack) -> None:
    api = stack.url("prefect") + "/api"
    with httpx.Client(timeout=10) as client:
        pools = {
            p["name"]: p["type"] for p in client.post(f"{api}/work_pools/filter", json={}).json()
        }
        assert pools.get("local") == "process" and pools.get("gpu") == "process", pools
        flows = {f["id"]: f["name"] for f in client.post(f"{api}/flows/filter", json={}).json()}
        deployments = {
            f"{flows[d['flow_id']]}/{d['name']}": d["work_pool_name"]
            for d in client.post(f"{api}/deployments/filter", json={}).json()
        }
        assert deployments == DEPLOYMENTS
        limit = client.get(f"{api}/v2/concurrency_limits/gpu:gpu")
        assert limit.status_code == 200 and limit.json()["limit"] == 1
        deadline = time.monotonic() + 30
        for pool in ("local", "gpu"):
            while True:
                workers = client.post(f"{api}/work_pools/{pool}/workers/filter", json={}).json()
                if any(w.get("status") == "ONLINE" for w in workers):
                    break
                assert time.monotonic() < deadline, f"no worker online on {pool}: {workers}"
                time.sleep(1)
        metrics = client.get(f"{api}/metrics")
        assert metrics.status_code == 200 and "process_resident_memory_bytes" in metrics.text


def test_mlflow_answers_its_service_name_and_refuses_other_hosts(stack: Stack) -> None:
    search = stack.url("mlflow") + "/api/2.0/mlflow/experiments/search?max_results=5"
    with httpx.Client(timeout=15) as client:
        ok = client.get(search, headers={"Host": "mlflow:5000"})
        assert ok.status_code == 200, ok.text
        assert client.get(search, headers={"Host": "attacker.example"}).status_code == 403


def test_the_app_logs_to_postgres_and_exports_its_metrics(stack: Stack) -> None:
    base = stack.url("app")
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{base}/health").status_code == 200
        ready = client.get(f"{base}/ready")
        assert ready.status_code == 503  # no champion yet: the healthcheck is liveness
        text = client.get(f"{base}/metrics").text
        assert re.search(r"^mlops_request_log_database_up 1\.0$", text, re.M), text[:2000]
        assert re.search(r"^mlops_monitoring_read_up 1\.0$", text, re.M)
        unauthorized = client.get(f"{base}/models")
        assert unauthorized.status_code == 401
        token = stack.locals["app"].env["MLOPS_SERVING__API_TOKEN"]
        assert token != "change-me"


def test_the_console_serves_its_page(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        page = client.get(stack.url("console") + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
