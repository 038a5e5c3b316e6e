"""Prefect events of the platform (names are contracts, see DESIGN.md)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

FEATURES_MATERIALIZED = "mlops.features.materialized"
MODEL_REGISTERED = "mlops.model.registered"
MODEL_PROMOTED = "mlops.model.promoted"
MODEL_DRIFT_DETECTED = "mlops.model.drift-detected"
MODEL_PERFORMANCE_DEGRADED = "mlops.model.performance-degraded"


def model_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.model.{name}", "prefect.resource.name": name}


def view_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.feature-view.{name}", "prefect.resource.name": name}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    """Emit a Prefect event; an events backend that is down never fails the caller."""
    from prefect.events import emit_event

    try:
        emit_event(event=event, resource=resource, payload=payload)
    except Exception:  # the event is a notification, never the reason work fails
        logger.warning("could not emit event %s", event, exc_info=True)
