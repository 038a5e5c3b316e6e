"""The FastAPI application factory.

Nothing is built at import time. Run it with::

    uvicorn --factory app.main:create_app

or, in code and tests, ``TestClient(create_app(settings))`` (as a context manager, so
that the lifespan runs).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.fastpath import ServingApp
from app.lifespan import lifespan
from app.metrics import MetricsMiddleware, ServingMetrics
from app.routes import inference, management, platform
from app.schemas import PredictRequest
from app.security import BodyLimitMiddleware
from mlops.serving.reloader import ModelSlot
from mlops.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app serving ``settings.serving.model_name@champion`` (settings from env if None)."""
    app = ServingApp(
        title="mlops serving",
        summary="Scores the champion ONNX model on online-store or inline features.",
        version="0.2.0",
        lifespan=lifespan,
    )
    settings = settings if settings is not None else Settings()
    metrics = ServingMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.model_slot = ModelSlot()
    app.include_router(inference.router)
    app.include_router(management.router)
    app.include_router(platform.router)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    # Outermost first: the body limit answers 413 before anything reads the body, and
    # the metrics middleware counts every request, 413s included. POST /predict does
    # both itself, ahead of them (app.fastpath).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.serving.max_body_bytes)
    paths = frozenset(path for route in app.routes if (path := getattr(route, "path", None)))
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the schema of the body ``/predict`` parses itself."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["PredictRequest"] = PredictRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        app.openapi_schema = document
    return app.openapi_schema
