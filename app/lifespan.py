"""App start-up and shutdown: clients from settings, the champion, the online store.

At start the lifespan builds the MLflow client (tracking and registry URIs from
settings) and the online store, then loads the champion in a worker thread. A missing
champion or one that fails its checks does not stop the app: ``/health`` answers,
``/ready`` and the model routes answer 503 with the reason, and inline requests wait
for a model. A later load only has to assign ``app.state.model`` (one reference).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops.errors import MlopsError, NoChampionError
from mlops.features.online import build_online_store
from mlops.serving import LoadedModel, load_model
from mlops.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOutcome:
    """A loaded model, or why there is none."""

    model: LoadedModel | None
    error: str | None


def model_cache_dir(settings: Settings) -> Path:
    """Where downloaded model versions are kept: ``<home>/serving/models``."""
    return settings.home / "serving" / "models"


def load_champion(*, settings: Settings, client: MlflowClient) -> LoadOutcome:
    """Load ``settings.serving.model_name@champion``; never raises for registry problems."""
    name = settings.serving.model_name
    try:
        model = load_model(
            client=client, name=name, alias="champion", cache_dir=model_cache_dir(settings)
        )
    except NoChampionError as exc:
        logger.warning("%s", exc)
        return LoadOutcome(model=None, error=str(exc))
    except (MlopsError, MlflowException, OSError) as exc:
        logger.error("cannot serve model %s@champion: %s", name, exc, exc_info=True)
        return LoadOutcome(model=None, error=f"{type(exc).__name__}: {exc}")
    return LoadOutcome(model=model, error=None)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Fill ``app.state`` (settings, mlflow_client, online_store, model, model_error)."""
    settings: Settings = app.state.settings
    settings.ensure_home()
    client = MlflowClient(
        tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow.registry_uri
    )
    store = build_online_store(settings.online_store)
    app.state.mlflow_client = client
    app.state.online_store = store
    app.state.model = None
    app.state.model_error = "the champion is still loading"

    outcome = await anyio.to_thread.run_sync(
        lambda: load_champion(settings=settings, client=client)
    )
    app.state.model = outcome.model
    app.state.model_error = outcome.error
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(store.close)
        logger.info("online store closed")
