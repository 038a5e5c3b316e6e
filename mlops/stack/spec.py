"""What the local stack runs: one :class:`ServiceSpec` per process, built from options.

The services, and what each needs healthy before it starts::

    prefect   prefect server start              GET /api/health
    mlflow    mlflow server (serves artifacts)  GET /health
    console   streamlit run ui/console.py       GET /_stcore/health
    runner    mlops deploy --serve              its deployments READY in the Prefect API  (prefect)
    app       uvicorn app.main:create_app       GET /health, /ready: the champion  (prefect, mlflow)

Every child gets the same environment (:func:`stack_env`): the caller's, plus the
``MLOPS_*`` and ``PREFECT_*`` variables that point every component at the stack's
Prefect API, MLflow server and backends, so they all resolve the same :class:`Settings`.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url

from mlops.errors import StackError  # re-exported: it lived here before
from mlops.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[2]
"""The checkout the services run from (``app.main``, ``ui/console.py``, ``flows/``)."""

PREFECT_DB = "prefect"
MLFLOW_DB = "mlflow"
REQUEST_LOG_DB = "mlops_requests"

HealthKind = Literal["http", "deployments", "app"]


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a service is healthy (serializable: ``status`` runs it again later).

    ``http``: ``GET url`` answers 200. ``deployments``: ``url`` is a Prefect API whose
    deployments served by a runner (no work pool) are all READY. ``app``: ``GET
    url/health`` answers 200; ``url/ready`` tells whether a champion is served.
    """

    kind: HealthKind
    url: str


@dataclass(frozen=True)
class ServiceSpec:
    """One process of the stack: its command, where it logs and how it is checked."""

    name: str
    command: list[str]
    url: str
    """What a person opens (a UI, an API's base URL)."""
    health: HealthCheck
    log_path: Path
    port: int | None = None
    """The port it binds: checked free before anything starts."""
    env: dict[str, str] = field(default_factory=dict)
    """Its own variables, on top of the stack's shared environment."""
    needs: tuple[str, ...] = ()
    """Services that must be healthy before this one starts."""
    stop_signal: Literal["SIGINT", "SIGTERM"] = "SIGTERM"
    """What asks it to stop (the runner takes SIGINT: it then pauses its schedules)."""


@dataclass(frozen=True)
class StackOptions:
    """What ``mlops up`` was asked for. ``postgres``/``redis`` None: embedded backends."""

    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    app_port: int = 8000
    console_port: int = 8501
    postgres: str | None = None
    """A Postgres server URL (``postgresql://user@host:5432``); its database part is ignored."""
    database_prefix: str = ""
    """Prepended to the database names (``prefect``, ``mlflow``, ``mlops_requests``)."""
    redis: str | None = None
    """The online store's Redis URL (``redis://host:6379/0``)."""
    mlflow_workers: int = 1


@dataclass(frozen=True)
class Stack:
    """The services to run, the environment they share, and where the backends are."""

    home: Path
    services: list[ServiceSpec]
    env: dict[str, str]
    backends: dict[str, str] = field(default_factory=dict)
    """What runs where, for people (passwords hidden): name → location."""
    databases: list[str] = field(default_factory=list)
    """Postgres databases the stack needs (created when missing)."""

    @property
    def state_path(self) -> Path:
        return state_path(self.home)

    def service(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)


def state_path(home: Path) -> Path:
    """``<home>/stack/state.json``: the services of the last ``mlops up`` from ``home``."""
    return home / "stack" / "state.json"


def log_dir(home: Path) -> Path:
    return home / "logs"


def postgres_url(server: str, database: str, *, driver: str) -> str:
    """``server`` (any database part dropped) with ``database`` and a SQLAlchemy ``driver``.

    >>> postgres_url("postgresql://postgres@db:5432/x", "mlflow", driver="psycopg")
    'postgresql+psycopg://postgres@db:5432/mlflow'
    """
    url = _server_url(server)
    return url.set(drivername=f"postgresql+{driver}", database=database).render_as_string(
        hide_password=False
    )


def _server_url(server: str) -> URL:
    try:
        url = make_url(server)
    except Exception as exc:  # sqlalchemy raises ArgumentError for anything unparsable
        raise StackError(f"--postgres {server!r} is not a database URL: {exc}") from exc
    if url.get_backend_name() != "postgresql":
        raise StackError(
            f"--postgres must be a PostgreSQL URL (postgresql://user@host:5432), not {server!r}"
        )
    return url


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for tables and the state file)."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (redis://, http://): hide user:password@
        scheme, rest = url.split("://", 1)
        if "@" in rest.split("/", 1)[0]:
            credentials, host = rest.split("@", 1)
            user = credentials.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
        return url


def _tool(name: str, module: str) -> list[str]:
    """The console script ``name`` of this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


def build_stack(settings: Settings, options: StackOptions) -> Stack:
    """The services of ``mlops up`` for ``settings.home`` and ``options`` (nothing started)."""
    home = settings.home
    logs = log_dir(home)
    host = options.host
    prefect_base = f"http://{host}:{options.prefect_port}"
    prefect_api = f"{prefect_base}/api"
    mlflow_url = f"http://{host}:{options.mlflow_port}"
    app_url = f"http://{host}:{options.app_port}"
    console_url = f"http://{host}:{options.console_port}"
    artifacts = home / "mlartifacts"

    prefix = options.database_prefix
    databases: list[str] = []
    prefect_env: dict[str, str] = {}
    if options.postgres:
        databases = [f"{prefix}{PREFECT_DB}", f"{prefix}{MLFLOW_DB}", f"{prefix}{REQUEST_LOG_DB}"]
        prefect_db = postgres_url(options.postgres, databases[0], driver="asyncpg")
        backend_store = postgres_url(options.postgres, databases[1], driver="psycopg")
        request_log = postgres_url(options.postgres, databases[2], driver="psycopg")
        prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_db
    else:
        prefect_db = f"sqlite:///{home / 'prefect' / 'prefect.db'}"
        backend_store = f"sqlite:///{home / 'mlflow.db'}"
        request_log = settings.request_log.url or f"sqlite:///{home / 'requests.db'}"

    env = stack_env(
        settings,
        prefect_api=prefect_api,
        mlflow_url=mlflow_url,
        options=options,
        request_log=request_log if options.postgres else None,
    )

    python = sys.executable
    services = [
        ServiceSpec(
            name="prefect",
            command=[
                *_tool("prefect", "prefect"),
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(options.prefect_port),
            ],
            url=prefect_base,
            health=HealthCheck("http", f"{prefect_api}/health"),
            log_path=logs / "prefect.log",
            port=options.prefect_port,
            env=prefect_env,
        ),
        ServiceSpec(
            name="mlflow",
            command=[
                *_tool("mlflow", "mlflow"),
                "server",
                "--backend-store-uri",
                backend_store,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                host,
                "--port",
                str(options.mlflow_port),
                "--workers",
                str(options.mlflow_workers),
            ],
            url=mlflow_url,
            health=HealthCheck("http", f"{mlflow_url}/health"),
            log_path=logs / "mlflow.log",
            port=options.mlflow_port,
            # its GenAI job runner (7 huey consumers) serves nothing the platform uses
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        ServiceSpec(
            name="runner",
            command=[*_tool("mlops", "mlops.cli.main"), "deploy", "--serve"],
            url=f"{prefect_base}/deployments",
            health=HealthCheck("deployments", prefect_api),
            log_path=logs / "runner.log",
            needs=("prefect",),
            stop_signal="SIGINT",
        ),
        ServiceSpec(
            name="app",
            command=[
                python,
                "-m",
                "uvicorn",
                "--factory",
                "app.main:create_app",
                "--host",
                host,
                "--port",
                str(options.app_port),
                "--no-access-log",
            ],
            url=app_url,
            health=HealthCheck("app", app_url),
            log_path=logs / "app.log",
            port=options.app_port,
            needs=("prefect", "mlflow"),
        ),
        ServiceSpec(
            name="console",
            command=[
                python,
                "-m",
                "streamlit",
                "run",
                str(PROJECT_DIR / "ui" / "console.py"),
                "--server.headless",
                "true",
                "--server.address",
                host,
                "--server.port",
                str(options.console_port),
                "--server.fileWatcherType",
                "none",
                "--browser.gatherUsageStats",
                "false",
            ],
            url=console_url,
            health=HealthCheck("http", f"{console_url}/_stcore/health"),
            log_path=logs / "console.log",
            port=options.console_port,
        ),
    ]
    online = (
        f"redis {masked(options.redis)}"
        if options.redis
        else f"sqlite {getattr(settings.online_store, 'path', None) or home / 'online.db'}"
    )
    backends = {
        "home": str(home),
        "prefect database": masked(prefect_db),
        "mlflow backend store": masked(backend_store),
        "mlflow artifacts": f"{artifacts} (served by mlflow)",
        "online store": online,
        "request log": masked(request_log),
    }
    return Stack(home=home, services=services, env=env, backends=backends, databases=databases)


def stack_env(
    settings: Settings,
    *,
    prefect_api: str,
    mlflow_url: str,
    options: StackOptions,
    request_log: str | None = None,
) -> dict[str, str]:
    """The variables every child gets on top of the caller's environment.

    They make each component resolve the same :class:`Settings` as the stack: the home,
    the Prefect API (and ``PREFECT_API_URL`` / ``PREFECT_HOME`` for Prefect itself), the
    MLflow server for tracking, registry and artifacts (``mlflow-artifacts:`` URIs, so
    clients upload through the server), the app's address, and the Redis online store
    and Postgres request log when asked for.
    """
    prefect_home = settings.prefect.home or settings.home / "prefect"
    env = {
        "MLOPS_HOME": str(settings.home),
        "MLOPS_PREFECT__API_URL": prefect_api,
        "MLOPS_PREFECT__HOME": str(prefect_home),
        "MLOPS_MLFLOW__TRACKING_URI": mlflow_url,
        "MLOPS_MLFLOW__REGISTRY_URI": mlflow_url,
        "MLOPS_MLFLOW__ARTIFACT_ROOT": "mlflow-artifacts://",
        # the children run from the checkout: relative paths would resolve elsewhere
        "MLOPS_FEATURES__DEFINITIONS": str(settings.features.definitions),
        "MLOPS_SERVING__HOST": options.host,
        "MLOPS_SERVING__PORT": str(options.app_port),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if options.redis:
        env["MLOPS_ONLINE_STORE__TYPE"] = "redis"
        env["MLOPS_ONLINE_STORE__URL"] = options.redis
    if request_log:
        env["MLOPS_REQUEST_LOG__URL"] = request_log
    return env
