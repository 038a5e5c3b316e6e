"""The HTTP floor: a bare FastAPI app whose ``POST /predict`` answers a fixed body.

``benchmarks/bench_serving.py`` serves it with the very uvicorn options of the inference
app (workers, uvloop, httptools, no access log), so that the gap between the two is the
app's own work: validation, auth, features, the model, the response, logging, metrics.
The endpoint reads the request body (as any real endpoint must) and answers a
pre-encoded JSON body of the size and shape of a one-row prediction. ``GET /ready``
answers 200 for the readiness probe.

    .venv/bin/python -m uvicorn --factory bare_app:create_app \\
        --app-dir benchmarks/_serving --port 8001 --loop uvloop --http httptools
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request, Response

FIXED_BODY = json.dumps(
    {
        "request_id": "00000000-0000-0000-0000-000000000000",
        "model": {"name": "fraud_detector", "version": "1"},
        "predictions": [
            {
                "entity": None,
                "index": 0,
                "label": 0,
                "probability": 0.003160923719406128,
                "probabilities": [0.9968390464782715, 0.003160923719406128],
            }
        ],
    },
    separators=(",", ":"),
).encode()


def create_app() -> FastAPI:
    """A FastAPI app with ``POST /predict`` (fixed body) and ``GET /ready``."""
    app = FastAPI(title="bare endpoint (HTTP floor)", openapi_url=None)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(content=FIXED_BODY, media_type="application/json")

    @app.get("/ready")
    async def ready() -> Response:
        return Response(content=b'{"status":"ready"}', media_type="application/json")

    return app
