"""Starting and stopping the HTTP servers the serving benchmarks compare.

Each server is a child process in its own process group (``start_new_session``), so
that stopping it stops its workers too: :func:`running` sends SIGTERM to the group,
then SIGKILL if it is still there after a grace period, on the way out of its block,
whether the block ended, raised or was interrupted (Ctrl-C). :func:`exit_on_sigterm`
turns SIGTERM of the benchmark itself into an exception, so that those blocks unwind
then too.

The commands:

- ours: ``python -m uvicorn --factory app.main:create_app`` with ``--workers N --loop
  uvloop --http httptools --no-access-log``;
- the bare endpoint: the same uvicorn options on ``bare_app:create_app``;
- MLflow: ``mlflow models serve -m models:/NAME/VERSION --env-manager local -w N`` (it
  runs uvicorn itself, with its default options: uvloop and httptools when installed,
  and its access log on).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from mlops.cli.server import free_port

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
BARE_APP_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
UVICORN_OPTIONS = ("--loop", "uvloop", "--http", "httptools", "--no-access-log")
_STOP_GRACE_S = 10.0
_TAIL_LINES = 30


class ServerError(RuntimeError):
    """A server exited while starting, or was not ready in time."""


@dataclass(frozen=True)
class Server:
    """How to start one server: the command, its environment, where it is ready."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def uvicorn_command(target: str, *, port: int, workers: int, app_dir: Path | None) -> list[str]:
    """``python -m uvicorn --factory TARGET`` with the options shared by ours and bare."""
    command = [sys.executable, "-m", "uvicorn", "--factory", target]
    command += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    if app_dir is not None:
        command += ["--app-dir", str(app_dir)]
    return [*command, *UVICORN_OPTIONS]


def ours(*, workers: int, env: dict[str, str], log_dir: Path, cwd: Path) -> Server:
    """The inference app (``app.main:create_app``), configured by ``env`` (``MLOPS_*``)."""
    port = free_port(HOST)
    return Server(
        name="ours",
        command=uvicorn_command("app.main:create_app", port=port, workers=workers, app_dir=ROOT),
        port=port,
        ready_path="/ready",
        log_path=log_dir / f"ours-w{workers}.log",
        env=env,
        cwd=cwd,
    )


def bare(*, workers: int, log_dir: Path, cwd: Path) -> Server:
    """The bare FastAPI endpoint of ``_serving/bare_app.py``: the HTTP floor."""
    port = free_port(HOST)
    return Server(
        name="bare",
        command=uvicorn_command(
            "bare_app:create_app", port=port, workers=workers, app_dir=BARE_APP_DIR
        ),
        port=port,
        ready_path="/ready",
        log_path=log_dir / f"bare-w{workers}.log",
        cwd=cwd,
    )


def mlflow(*, model_uri: str, tracking_uri: str, workers: int, log_dir: Path, cwd: Path) -> Server:
    """``mlflow models serve --env-manager local`` on ``model_uri``.

    MLflow runs ``uvicorn`` from the PATH, so the venv's ``bin`` goes first on it.
    """
    port = free_port(HOST)
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", HOST, "-p", str(port), "-w", str(workers)]
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Server(
        name="mlflow",
        command=command,
        port=port,
        ready_path="/ping",
        log_path=log_dir / f"mlflow-w{workers}.log",
        env=env,
        cwd=cwd,
    )


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any ``MLOPS_*`` or ``MLFLOW_*_URI`` variable, plus ``extra``.

    The servers see only the settings the benchmark gives them.
    """
    dropped = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MLOPS_") and key not in dropped
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return {**env, **extra}


@contextlib.contextmanager
def running(server: Server, *, timeout_s: float = 120.0) -> Iterator[str]:
    """Start ``server``, wait until its ready path answers 200, yield its base URL, stop it."""
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(
            server.command,
            cwd=server.cwd,
            env=child_env(server.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(server, proc, timeout_s=timeout_s)
            yield server.base_url
        finally:
            stop(proc)


def cpu_seconds(port: int) -> float:
    """CPU time (user + system) used so far by the server listening on ``port``: every
    process of its session (uvicorn's supervisor and workers, gunicorn's), read from
    /proc. The session is found by the server's command line naming the port."""
    tick = os.sysconf("SC_CLK_TCK")
    sessions = set()
    stats: list[list[str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats.append(fields)
        if str(port).encode() in cmdline:
            sessions.add(fields[3])  # the session id (start_new_session: the server's pid)
    # fields after the name: state ppid pgrp session ... utime(11) stime(12)
    return sum(int(f[11]) + int(f[12]) for f in stats if f[3] in sessions) / tick


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, then SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; workers it left behind in the group go too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = server.base_url + server.ready_path
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"{server.name} exited with code {proc.returncode} while starting "
                f"({' '.join(server.command)}); its log {server.log_path} ends:\n"
                + log_tail(server.log_path)
            )
        try:
            answer = httpx.get(url, timeout=2.0)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:300]}"
        except httpx.TransportError as exc:
            last = f"not answering: {exc}"
        if time.monotonic() > deadline:
            raise ServerError(
                f"{server.name} was not ready after {timeout_s:.0f} s ({last}); its log "
                f"{server.log_path} ends:\n" + log_tail(server.log_path)
            )
        time.sleep(0.2)


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit`` here, so that ``finally`` blocks stop the servers."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
