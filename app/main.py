"""The FastAPI application factory.

Nothing is built at import time. Run it with::

    uvicorn --factory app.main:create_app

or, in code and tests, ``TestClient(create_app(settings))`` (as a context manager, so
that the lifespan runs).
"""

from __future__ import annotations

from fastapi import FastAPI

from app.lifespan import lifespan
from app.routes import inference
from mlops.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app serving ``settings.serving.model_name@champion`` (settings from env if None)."""
    app = FastAPI(
        title="mlops serving",
        summary="Scores the champion ONNX model on online-store or inline features.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings if settings is not None else Settings()
    app.state.model = None
    app.state.model_error = "the app has not started"
    app.include_router(inference.router)
    return app
