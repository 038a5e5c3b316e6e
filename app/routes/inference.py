"""Inference routes: ``/predict``, ``/model``, ``/health``, ``/ready``.

``/predict`` is ``async``: the blocking online-store read runs in the thread pool, and
so does inference on more than :data:`INLINE_SCORING_ROWS` rows; a few rows score on the
event loop in tens of microseconds, less than a hop to the pool would cost. Domain
errors become HTTP errors here and only here. Every response computed from a model
carries the ``X-Model-Version`` header; predictions also carry ``X-Request-ID``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime

import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.deps import ModelDep, ServingState, current_model
from app.metrics import ServingMetrics
from app.routes._limits import over_batch_limit
from app.schemas import (
    HealthResponse,
    ModelInfo,
    ModelRef,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    ViewRefOut,
)
from app.security import check_token
from mlops.errors import (
    EntityNotFoundError,
    FeatureStoreError,
    StoreUnavailableError,
    VersionMismatchError,
)
from mlops.serving import (
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    rows_to_matrix,
)
from mlops.serving.coalesce import CoalescingReader
from mlops.serving.request_log import PredictionRecord
from mlops.serving.runtime import POSITIVE_THRESHOLD, entity_reads, matrix_from_rows
from mlops.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["inference"])

MODEL_VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-ID"
INLINE_SCORING_ROWS = 64
"""Up to this many rows, inference runs on the event loop (see the module docstring)."""


def _error(model: LoadedModel, code: int, detail: str) -> HTTPException:
    return HTTPException(
        status_code=code, detail=detail, headers={MODEL_VERSION_HEADER: model.version}
    )


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """Always 200 while the process serves requests."""
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: a verified champion is loaded",
    responses={503: {"description": "No model is loaded (the reason is in 'detail')."}},
)
async def ready(model: ModelDep, response: Response) -> ReadyResponse:
    """200 with the model's version once a champion is loaded, else 503."""
    response.headers[MODEL_VERSION_HEADER] = model.version
    return ReadyResponse(model=ModelRef(name=model.name, version=model.version))


@router.get(
    "/model",
    response_model=ModelInfo,
    summary="The served model",
    responses={503: {"description": "No model is loaded."}},
)
async def model_info(model: ModelDep, response: Response) -> ModelInfo:
    """Name, version, alias, features, views, entity key, sha256 and signature."""
    response.headers[MODEL_VERSION_HEADER] = model.version
    return ModelInfo(
        name=model.name,
        version=model.version,
        alias=model.alias,
        feature_names=list(model.feature_names),
        feature_views=[ViewRefOut(name=v.name, version=v.version) for v in model.feature_views],
        entity_key=model.entity_key,
        onnx_sha256=model.onnx_sha256,
        signature=model.signature,
        loaded_at=model.loaded_at,
    )


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Score entities and/or inline feature rows",
    # The token check and the body's parsing run inline (see predict): declared here for
    # the OpenAPI document (app.main adds the PredictRequest schema to its components).
    openapi_extra={
        "security": [{"HTTPBearer": []}, {}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
        },
    },
    responses={
        401: {"description": "A token is required (MLOPS_SERVING__REQUIRE_TOKEN_FOR_PREDICT)."},
        403: {"description": "The bearer token is not valid."},
        404: {"description": "An entity has no features in the online store."},
        409: {"description": "Online features of another feature view version."},
        413: {"description": "The body is over MLOPS_SERVING__MAX_BODY_BYTES."},
        422: {"description": "Invalid body: the message and 'loc' name the field."},
        503: {"description": "No model is loaded, or the online store is unreachable."},
    },
)
async def predict(request: Request) -> Response:
    """Entity rows come from the online store; inline rows hold raw feature values.

    The answer carries a ``request_id`` (also in the ``X-Request-ID`` header) under which
    the prediction is logged; send it back with ``POST /feedback`` once the label is known.
    """
    # The hot path takes its parts from one object instead of six dependencies, and
    # parses its body with pydantic's JSON parser: FastAPI's dependency solving and body
    # handling cost more than the model on one-row requests.
    started = time.perf_counter()
    received_at = datetime.now(UTC)
    serving: ServingState = request.app.state.serving
    settings, metrics = serving.settings, serving.metrics
    if settings.serving.require_token_for_predict:
        check_token(request.headers.get("authorization"), settings)
    raw = await request.body()
    body = _parse_body(raw)
    model = current_model(serving.slot)
    request_log = serving.request_log
    limit = settings.serving.max_batch_rows
    if body.size > limit:
        raise over_batch_limit(("body",), body.size, "rows (entities + rows)", limit)
    entities = body.entities or []
    rows = body.rows or []
    inline = _inline_matrix(rows, model)
    if entities:
        by_entity = await _read_entity_features(
            reader=serving.entity_reader,
            model=model,
            keys=entities,
            settings=settings,
            metrics=metrics,
        )
        matrix = np.concatenate([by_entity, inline]) if rows else by_entity
    else:
        matrix = inline
    if len(matrix) <= INLINE_SCORING_ROWS:
        # A few rows score in tens of µs: less than a hop to the thread pool costs.
        probabilities = _score(model, matrix, metrics)
    else:
        probabilities = await anyio.to_thread.run_sync(_score, model, matrix, metrics)

    request_id = os.urandom(16).hex()  # 128 random bits, like uuid4, for a tenth the cost
    positive = probabilities[:, 1]
    labels = (positive >= POSITIVE_THRESHOLD).astype(np.int8)
    n_positive = int(labels.sum())
    version = model.version
    counted = metrics.of_version(version)
    if n_positive:
        counted.positive.inc(n_positive)
    if n_positive < len(labels):
        counted.negative.inc(len(labels) - n_positive)
    predictions = [
        {
            "entity": entity,
            "index": index,
            "label": label,
            "probability": p1,
            "probabilities": [p0, p1],
        }
        for (entity, index), label, (p0, p1) in zip(
            _sources(entities, len(rows)),
            labels.tolist(),
            probabilities.astype(np.float64).tolist(),
            strict=True,
        )
    ]
    # Encoded once: the answer and the request log share the bytes (and the log takes the
    # request body as the client sent it), so nothing is encoded twice.
    encoded = orjson.dumps(predictions)
    request_log.log_prediction(
        PredictionRecord(
            request_id=request_id,
            received_at=received_at,
            model_name=model.name,
            model_version=version,
            inputs=raw,
            outputs=encoded,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            n_rows=len(predictions),
        )
    )
    head = orjson.dumps(
        {"request_id": request_id, "model": {"name": model.name, "version": version}}
    )
    return Response(
        content=head[:-1] + b',"predictions":' + encoded + b"}",
        media_type="application/json",
        headers={MODEL_VERSION_HEADER: version, REQUEST_ID_HEADER: request_id},
    )


def _parse_body(raw: bytes) -> PredictRequest:
    """The body as a :class:`PredictRequest`; 422 naming the field (as FastAPI would)."""
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from exc


def _inline_matrix(rows: list[dict[str, float]], model: LoadedModel) -> np.ndarray:
    try:
        return rows_to_matrix(rows, model.feature_names)
    except FeatureRowError as exc:
        raise RequestValidationError(
            [
                {
                    "type": f"feature_{exc.problem.replace(' ', '_')}",
                    "loc": ("body", "rows", exc.row, exc.feature),
                    "msg": str(exc),
                    "input": None,
                }
            ]
        ) from exc


def _score(model: LoadedModel, matrix: np.ndarray, metrics: ServingMetrics) -> np.ndarray:
    """``model.predict``, its time in ``InferenceSession.run`` observed."""
    started = time.perf_counter()
    probabilities = model.predict(matrix)
    metrics.of_version(model.version).inference.observe(time.perf_counter() - started)
    return probabilities


def _sources(entities: list[str], n_rows: int) -> list[tuple[str | None, int]]:
    """(entity or None, index) of each prediction: entities first, then inline rows."""
    out: list[tuple[str | None, int]] = [(key, i) for i, key in enumerate(entities)]
    out += [(None, i) for i in range(n_rows)]
    return out


async def _read_entity_features(
    *,
    reader: CoalescingReader,
    model: LoadedModel,
    keys: list[str],
    settings: Settings,
    metrics: ServingMetrics,
) -> np.ndarray:
    """Features of ``keys`` from the online store, timed and counted, domain errors mapped
    to HTTP. The blocking read runs in the thread pool, shared with the lookups of
    concurrent requests (:class:`~mlops.serving.coalesce.CoalescingReader`)."""
    backend = settings.online_store.type
    started = time.perf_counter()
    try:
        return matrix_from_rows(model, keys, await reader.read(entity_reads(model, keys)))
    except EntityNotFoundError as exc:
        raise _error(model, status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except VersionMismatchError as exc:
        raise _error(model, status.HTTP_409_CONFLICT, str(exc)) from exc
    except StoreUnavailableError as exc:
        metrics.online_errors.labels(backend, "unavailable").inc()
        logger.warning("online store (%s) unavailable: %s", backend, exc)
        raise _error(
            model,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the online store ({backend}) is unreachable, so entity features cannot be read; "
            f"inline 'rows' still work: {exc}",
        ) from exc
    except IncompleteFeaturesError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "entity_features_incomplete",
                    "loc": ("body", "entities", keys.index(exc.entity)),
                    "msg": str(exc),
                    "input": exc.entity,
                }
            ]
        ) from exc
    except FeatureStoreError as exc:
        metrics.online_errors.labels(backend, "error").inc()
        logger.error("online store read failed: %s", exc)
        raise _error(model, status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    finally:
        metrics.online_latency.labels(backend).observe(time.perf_counter() - started)
