"""FastAPI dependencies: routes take only these ``Annotated`` aliases.

Everything comes from ``app.state``, filled by :mod:`app.lifespan`. ``/predict`` reads
its parts from one :class:`ServingState` instead (its hot path). The model is read from
the slot once per request, so a request sees one model even if the reloader swaps
in a new champion meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.metrics import ServingMetrics
from mlops.serving import LoadedModel
from mlops.serving.coalesce import CoalescingReader, CoalescingScorer
from mlops.serving.reloader import ModelSlot, Reloader
from mlops.serving.request_log import RequestLog
from mlops.settings import Settings


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


@dataclass(frozen=True, slots=True)
class ServingState:
    """What ``/predict`` needs, in one object (``app.state.serving``, set by the lifespan)."""

    settings: Settings
    slot: ModelSlot
    metrics: ServingMetrics
    request_log: RequestLog
    entity_reader: CoalescingReader
    scorer: CoalescingScorer


def current_model(slot: ModelSlot) -> LoadedModel:
    """The model in ``slot`` (read once); 503 naming the reason when there is none."""
    model = slot.model
    if model is None:
        reason = slot.error or "the model has not been loaded yet"
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no champion model is loaded: {reason}",
        )
    return model


async def get_model(request: Request) -> LoadedModel:
    """The loaded champion; 503 naming the reason when there is none."""
    return current_model(request.app.state.model_slot)


async def get_metrics(request: Request) -> ServingMetrics:
    """The app's Prometheus metrics."""
    metrics: ServingMetrics = request.app.state.metrics
    return metrics


async def get_request_log(request: Request) -> RequestLog:
    """Where predictions and feedback are logged (batched off the hot path)."""
    serving: ServingState = request.app.state.serving
    return serving.request_log


async def get_reloader(request: Request) -> Reloader:
    """What follows the registry's champion alias."""
    reloader: Reloader = request.app.state.reloader
    return reloader


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
RequestLogDep = Annotated[RequestLog, Depends(get_request_log)]
ReloaderDep = Annotated[Reloader, Depends(get_reloader)]
