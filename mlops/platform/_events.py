"""Sending a platform event to a given Prefect API, or through :func:`mlops.events.emit`."""

from __future__ import annotations

import logging
from typing import Any

from mlops import events

logger = logging.getLogger(__name__)


def send(
    event: str, resource: dict[str, str], payload: dict[str, Any], api_url: str | None
) -> None:
    """Emit ``event``: to ``api_url`` and waiting for it to be sent when given (the app,
    whose Prefect server is in its settings, not in Prefect's own), else through
    :func:`mlops.events.emit` (Prefect's configured API). Never raises: an event is a
    notification, not the reason an operation fails."""
    if not api_url:
        events.emit(event, resource, payload)
        return
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.schemas.events import Resource
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def deliver() -> None:
        async with PrefectEventsClient(api_url=api_url) as client:
            await client.emit(Event(event=event, resource=Resource(resource), payload=payload))

    try:
        run_coro_as_sync(deliver())
    except Exception:  # the event is a notification, never the reason work fails
        logger.warning("could not emit event %s to %s", event, api_url, exc_info=True)
