"""FastAPI dependencies: routes take only these ``Annotated`` aliases.

Everything comes from ``app.state``, filled by :mod:`app.lifespan`. The model is read
once per request, so a request sees one model even if a new champion is swapped in
meanwhile.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from mlops.features.online.base import OnlineStore
from mlops.serving import LoadedModel
from mlops.settings import Settings


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_model(request: Request) -> LoadedModel:
    """The loaded champion; 503 naming the reason when there is none."""
    model: LoadedModel | None = request.app.state.model
    if model is None:
        reason = request.app.state.model_error or "the model has not been loaded yet"
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no champion model is loaded: {reason}",
        )
    return model


async def get_online_store(request: Request) -> OnlineStore:
    """The online store (opened lazily; an unreachable backend fails on read)."""
    store: OnlineStore = request.app.state.online_store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
OnlineStoreDep = Annotated[OnlineStore, Depends(get_online_store)]
