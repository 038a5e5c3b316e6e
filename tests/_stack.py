"""Run ``mlops up`` as a person does, for the tests that need the whole local stack.

``launch`` starts ``python -m mlops.cli.stack up`` in a subprocess on free ports and a
home of its own; ``wait_healthy`` waits for ``status`` to see every service healthy;
``shutdown`` sends Ctrl-C (SIGINT) and waits for the clean stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlops.cli.server import free_port
from mlops.settings import Settings
from mlops.stack.spec import StackOptions, build_stack
from mlops.stack.state import group_members, read_state, report

STARTUP_S = 170.0


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


def launch(home: Path, *extra: str, env: dict[str, str] | None = None) -> Up:
    """Start ``python -m mlops.cli.stack up`` on free ports (not waiting for it); ``env``
    adds variables to the clean environment it runs in."""
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
            command,
            cwd=home.parent,
            env=_clean_env() | (env or {}),
            stdout=out,
            stderr=subprocess.STDOUT,
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
