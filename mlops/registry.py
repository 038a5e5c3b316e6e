"""MLflow helpers: experiments, the registry's contract tags, aliases, promotion.

The registry is the system of record. A version trained by the platform carries the
tags named in :class:`Tags`; the served version is the one aliased ``champion``, the
candidate the one aliased ``challenger``. Stages are never used.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlops.settings import Settings
from mlops.tags import Tags

__all__ = ["CHALLENGER", "CHAMPION", "Tags"]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def mlflow_client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def configure_mlflow(settings: Settings) -> str:
    """Make sure the settings' experiment exists; returns its id.

    Called at flow start (never at import). The experiment's artifacts go to
    ``settings.mlflow.artifact_root``. MLflow's module-level URIs are left alone: code
    that needs the fluent API wraps it in :func:`mlflow_uris`.
    """
    client = mlflow_client(settings)
    name = settings.mlflow.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    root = settings.mlflow.artifact_root or ""
    location = Path(root).resolve().as_uri() if "://" not in root else root
    try:
        return str(client.create_experiment(name, artifact_location=f"{location}/{name}"))
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_uris(tracking_uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.onnx.log_model``, ``mlflow.register_model``) at
    the settings' servers for the block, then restore what was there, environment too
    (MLflow's setters also write ``MLFLOW_*_URI`` variables that child processes inherit).
    """
    saved = {key: os.environ.get(key) for key in _URI_VARS}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of ``name`` aliased ``alias``, or None (no model or no alias)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_tags(client: MlflowClient, *, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(*, client: MlflowClient, name: str, version: str) -> None:
    """Move ``champion`` to ``version``; a challenger alias on it is removed."""
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    logger.info("model %s version %s is now %s", name, version, CHAMPION)


def git_sha() -> str:
    """The commit the code runs from, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def finish_run(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Mark the MLflow run FINISHED when the block succeeds and FAILED when it raises
    (KeyboardInterrupt and cancellation included), so no run is left RUNNING."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def model_version_url(tracking_uri: str, name: str, version: str) -> str | None:
    """The MLflow UI page of ``name`` version ``version``, when the tracking URI is an
    MLflow server (None for a file or database URI: there is no UI to link to)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{quote(name)}/versions/{quote(str(version))}"
