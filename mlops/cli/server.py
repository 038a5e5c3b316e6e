"""Running the inference app as a real uvicorn process (used by ``mlops demo``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mlops.errors import MlopsError
from mlops.processes import terminate


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def uvicorn_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]


@contextmanager
def running_app(
    *, host: str, port: int, env: dict[str, str], log_path: Path, timeout_s: float = 60.0
) -> Iterator[str]:
    """Start the app with uvicorn, wait until ``/ready``, yield its base URL, stop it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            uvicorn_command(host, port),
            cwd=root,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://{host}:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(base):
                if proc.poll() is not None:
                    raise MlopsError(
                        f"the app exited with code {proc.returncode} while starting; see {log_path}"
                    )
                if time.monotonic() > deadline:
                    raise MlopsError(
                        f"the app was not ready after {timeout_s:.0f}s "
                        f"({_not_ready_reason(base)}); see {log_path}"
                    )
                time.sleep(0.25)
            yield base
        finally:
            terminate(proc, timeout_s=15)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _not_ready_reason(base: str) -> str:
    try:
        return httpx.get(f"{base}/ready", timeout=1.0).text[:300]
    except httpx.TransportError as exc:
        return f"not answering: {exc}"
