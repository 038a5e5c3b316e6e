"""Checks before anything starts: free ports, reachable backends, the databases made.

Each failure is a :class:`StackError` that names the service, the port or the server,
and what to do about it.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import sqlalchemy as sa

from mlops.errors import StackError
from mlops.stack.spec import Stack, masked, postgres_url
from mlops.stack.state import group_members, is_alive, read_state

logger = logging.getLogger(__name__)

PORT_OPTIONS = {
    "prefect": "--prefect-port",
    "mlflow": "--mlflow-port",
    "app": "--app-port",
    "console": "--console-port",
}


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (as the services will bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers do: a port whose old connections linger in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise StackError(f"cannot bind {host}:{port}: {exc}") from exc
    return True


def check_ports(stack: Stack, host: str) -> None:
    """Refuse when two services share a port or one is taken by another process."""
    seen: dict[int, str] = {}
    for spec in stack.services:
        if spec.port is None:
            continue
        if spec.port in seen:
            raise StackError(
                f"{seen[spec.port]} and {spec.name} would both use port {spec.port}: give "
                f"one another port ({PORT_OPTIONS.get(spec.name, '--*-port')})",
                service=spec.name,
            )
        seen[spec.port] = spec.name
        if not port_free(host, spec.port):
            raise StackError(
                f"port {spec.port} on {host}, wanted by {spec.name}, is already in use by "
                f"another process: stop it or choose a free port with "
                f"{PORT_OPTIONS.get(spec.name, '--*-port')}",
                service=spec.name,
            )


def check_not_running(home: Path) -> None:
    """Refuse a second stack from the same home while the first one's ``mlops up`` lives."""
    state = read_state(home)
    if state is None:
        return
    pid = state.get("supervisor_pid")
    if state.get("status") in ("starting", "running", "stopping") and is_alive(
        pid, state.get("supervisor_start")
    ):
        raise StackError(
            f"a stack already runs from {home} (mlops up, pid {pid}): stop it with Ctrl-C "
            f"(or `kill -INT {pid}`) first, or use another MLOPS_HOME"
        )
    # each service led its own process group: what it started may outlive it
    leftovers = {
        name: members
        for name, svc in state.get("services", {}).items()
        if svc.get("pid") and (members := group_members(svc["pid"]))
    }
    if leftovers:
        listed = ", ".join(
            f"{name} (pids {' '.join(map(str, pids))})" for name, pids in leftovers.items()
        )
        groups = " ".join(f"-{state['services'][name]['pid']}" for name in leftovers)
        raise StackError(
            f"processes of an earlier stack from {home} still run without their mlops up: "
            f"{listed}; stop them first (kill -- {groups})"
        )


def ensure_databases(server: str, names: list[str]) -> list[str]:
    """Create the databases of ``names`` missing on the Postgres ``server``; returns those
    created. An unreachable server is a :class:`StackError` naming it."""
    if not names:
        return []
    engine = sa.create_engine(
        postgres_url(server, "postgres", driver="psycopg"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    created = []
    try:
        with engine.connect() as conn:
            existing = set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
            for name in names:
                if name in existing:
                    continue
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
                created.append(name)
                logger.info("created database %s", name)
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StackError(
            f"Postgres at {masked(server)} is not reachable ({reason}): start it or fix --postgres"
        ) from exc
    finally:
        engine.dispose()
    return created


def check_redis(url: str) -> None:
    """Ping the Redis server of the online store; unreachable is a :class:`StackError`."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise StackError(
            f"Redis at {masked(url)} is not reachable ({exc}): start it or fix --redis"
        ) from exc
    finally:
        client.close()
