"""The FastAPI application factory.

Nothing is built at import time. Run it with::

    uvicorn --factory app.main:create_app

or, in code and tests, ``TestClient(create_app(settings))`` (as a context manager, so
that the lifespan runs).
"""

from __future__ import annotations

from fastapi import FastAPI

from app.lifespan import lifespan
from app.metrics import MetricsMiddleware, ServingMetrics
from app.routes import inference, management
from app.security import BodyLimitMiddleware
from mlops.serving.reloader import ModelSlot
from mlops.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app serving ``settings.serving.model_name@champion`` (settings from env if None)."""
    app = FastAPI(
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
    # Outermost first: the body limit answers 413 before anything reads the body, and
    # the metrics middleware counts every request, 413s included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.serving.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
