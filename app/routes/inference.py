"""Inference routes: ``/predict``, ``/model``, ``/health``, ``/ready``.

``/predict`` is ``async``: inference on more than :data:`INLINE_SCORING_ROWS` rows runs
in the thread pool; a few rows score on the event loop, together with those of the
requests that arrived with them (one ``InferenceSession.run``), in tens of microseconds,
less than a hop to the pool would cost. Domain errors become HTTP errors here and only
here. Every response computed from a model
carries the ``X-Model-Version`` header; predictions also carry ``X-Request-ID``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    plain_loc,
)
from app.security import check_token
from mlops.errors import (
    EntityNotFoundError,
    FeatureStoreError,
    StoreUnavailableError,
    VersionMismatchError,
)
from mlops.serving import (
    FeatureColumnError,
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    rows_to_matrix,
    table_to_matrix,
)
from mlops.serving.coalesce import CoalescingReader
from mlops.serving.request_log import PredictionRecord
from mlops.serving.runtime import (
    POSITIVE_THRESHOLD,
    bulk_rows_matrix,
    bulk_table_matrix,
    column_order,
    entity_reads,
    matrix_from_rows,
)
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
    # Requests normally never get here: ServingApp answers POST /predict ahead of the
    # middleware stack and the router (app.main). This route serves the OpenAPI document
    # and any request that arrives by another way (a mount under a root path, say).
    serving: ServingState = request.app.state.serving
    answer = await answer_predict(
        serving, request.headers.get("authorization"), await request.body()
    )
    return Response(content=answer.content, media_type="application/json", headers=answer.headers())


@dataclass(frozen=True, slots=True)
class PredictAnswer:
    """The body of a 200 answer to ``/predict`` and what its headers carry."""

    content: bytes
    model_version: str
    request_id: str

    def headers(self) -> dict[str, str]:
        return {MODEL_VERSION_HEADER: self.model_version, REQUEST_ID_HEADER: self.request_id}


@dataclass(frozen=True, slots=True)
class _Body:
    """A parsed ``/predict`` body: entity keys, inline rows and their columns (if arrays)."""

    entities: list[str]
    rows: list[Any]
    columns: list[str] | None

    @property
    def size(self) -> int:
        return len(self.entities) + len(self.rows)


async def answer_predict(
    serving: ServingState, authorization: str | None, raw: bytes
) -> PredictAnswer:
    """Score the ``/predict`` body ``raw``; HTTP errors raised as ``HTTPException`` or
    ``RequestValidationError`` (the app's exception handlers render them)."""
    started = time.perf_counter()
    received_at = datetime.now(UTC)
    settings, metrics = serving.settings, serving.metrics
    if settings.serving.require_token_for_predict:
        check_token(authorization, settings)
    model = current_model(serving.slot)
    # Well-formed bodies (nearly all) are read straight from orjson's parse and turned
    # into the matrix in bulk; anything else takes pydantic's validation and the
    # row-by-row checks, which name the field at fault (422).
    body = _parse_plain(raw)
    inline = None
    if body is not None:
        _check_size(body, settings.serving.max_batch_rows)
        inline = _bulk_matrix(body, model)
    if body is None or inline is None:
        body = _parse_body(raw)
        _check_size(body, settings.serving.max_batch_rows)
        inline = _inline_matrix(body, model)
    entities = body.entities
    if entities:
        by_entity = await _read_entity_features(
            reader=serving.entity_reader,
            model=model,
            keys=entities,
            settings=settings,
            metrics=metrics,
        )
        matrix = np.concatenate([by_entity, inline]) if body.rows else by_entity
    else:
        matrix = inline
    if len(matrix) <= INLINE_SCORING_ROWS:
        # A few rows score on the loop, with those of the requests that came in with
        # this one: less than a hop to the thread pool costs (mlops.serving.coalesce).
        probabilities = await serving.scorer.score(model, matrix)
    else:
        probabilities = await anyio.to_thread.run_sync(serving.scorer.predict, model, matrix)

    request_id = new_request_id()
    positive = probabilities[:, 1]
    labels = (positive >= POSITIVE_THRESHOLD).astype(np.int8)
    n_positive = int(labels.sum())
    version = model.version
    counted = metrics.of_version(version)
    if n_positive:
        counted.positive.inc(n_positive)
    if n_positive < len(labels):
        counted.negative.inc(len(labels) - n_positive)
    # Entities first, then inline rows; each column converted once, in C.
    n_rows = len(body.rows)
    as_float = probabilities.astype(np.float64)
    predictions = [
        {
            "entity": entity,
            "index": index,
            "label": label,
            "probability": p1,
            "probabilities": [p0, p1],
        }
        for entity, index, label, p0, p1 in zip(
            [*entities, *itertools.repeat(None, n_rows)],
            itertools.chain(range(len(entities)), range(n_rows)),
            labels.tolist(),
            as_float[:, 0].tolist(),
            as_float[:, 1].tolist(),
            strict=True,
        )
    ]
    # Encoded once: the answer and the request log share the bytes (and the log takes the
    # request body as the client sent it), so nothing is encoded twice.
    encoded = orjson.dumps(predictions)
    serving.request_log.log_prediction(
        PredictionRecord(
            request_id=request_id,
            received_at=received_at,
            model_name=model.name,
            model_version=version,
            inputs=raw,
            outputs=encoded,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            n_rows=len(predictions),
            features=matrix.astype("<f4", copy=False).tobytes(),
        )
    )
    head = orjson.dumps(
        {"request_id": request_id, "model": {"name": model.name, "version": version}}
    )
    return PredictAnswer(
        content=head[:-1] + b',"predictions":' + encoded + b"}",
        model_version=version,
        request_id=request_id,
    )


_BODY_KEYS = frozenset({"entities", "rows", "columns"})
_MAX_NAME = 256  # EntityKey and FeatureName in app.schemas


def _names(value: Any) -> bool:
    """True when ``value`` is a list of names as the schema takes them (1 to 256 chars)."""
    return type(value) is list and all(
        type(name) is str and 0 < len(name) <= _MAX_NAME for name in value
    )


def _parse_plain(raw: bytes) -> _Body | None:
    """The body straight from orjson when its shape is one pydantic would accept
    unchanged (keys, types, not empty), else None: pydantic then names what is wrong.
    The values of inline rows are checked when the matrix is built (:func:`_bulk_matrix`)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or not doc.keys() <= _BODY_KEYS:
        return None
    entities = doc.get("entities")
    rows = doc.get("rows")
    columns = doc.get("columns")
    if entities is not None and not _names(entities):
        return None
    if rows is not None and type(rows) is not list:
        return None
    if not entities and not rows:
        return None
    if columns is not None and not (rows and _names(columns)):
        return None
    return _Body(entities=entities or [], rows=rows or [], columns=columns)


def _bulk_matrix(body: _Body, model: LoadedModel) -> np.ndarray | None:
    """The inline matrix when every row is well formed (checked in bulk), else None."""
    if body.columns is None:
        return bulk_rows_matrix(body.rows, model.feature_names)
    try:
        order = column_order(body.columns, model.feature_names)
    except FeatureColumnError:
        return None
    matrix = bulk_table_matrix(body.rows, len(body.columns))
    if matrix is None or order is None:
        return matrix
    return matrix[:, order]


def _check_size(body: _Body, limit: int) -> None:
    if body.size > limit:
        raise over_batch_limit(("body",), body.size, "rows (entities + rows)", limit)


def _parse_body(raw: bytes) -> _Body:
    """The body validated by :class:`PredictRequest`; 422 naming the field (as FastAPI
    would)."""
    try:
        body = PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": ("body", *plain_loc(error["loc"]))}
                for error in exc.errors(include_url=False)
            ]
        ) from exc
    return _Body(entities=body.entities or [], rows=body.rows or [], columns=body.columns)


def _inline_matrix(body: _Body, model: LoadedModel) -> np.ndarray:
    """The inline matrix with every check; 422 naming the row, column or feature."""
    try:
        if body.columns is None:
            return rows_to_matrix(body.rows, model.feature_names)
        return table_to_matrix(body.rows, body.columns, model.feature_names)
    except FeatureRowError as exc:
        loc: tuple[str | int, ...] = ("body", "rows", exc.row)
        if exc.feature is not None:
            loc += (exc.feature if body.columns is None else body.columns.index(exc.feature),)
        raise RequestValidationError(
            [
                {
                    "type": f"feature_{exc.problem.replace(' ', '_')}",
                    "loc": loc,
                    "msg": str(exc),
                    "input": None,
                }
            ]
        ) from exc
    except FeatureColumnError as exc:
        raise RequestValidationError(
            [
                {
                    "type": f"column_{exc.problem}",
                    "loc": ("body", "columns") + (() if exc.column is None else (exc.column,)),
                    "msg": str(exc),
                    "input": exc.feature,
                }
            ]
        ) from exc


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


def new_request_id() -> str:
    """32 hex digits, time-ordered and unique: the milliseconds since the epoch (48 bits),
    this process's random tag (40 bits) and its request counter (40 bits).

    Ordered keys go in at the end of the request log's primary-key index instead of at a
    random page of it, which halves what the log's writer spends per record; no system
    call per request either (os.urandom costs more than the rest of the id).
    """
    return f"{time.time_ns() // 1_000_000:012x}{_ID_TAG[0]}{next(_ID_COUNTER) & _ID_MASK:010x}"


_ID_MASK = (1 << 40) - 1
_ID_TAG = [os.urandom(5).hex()]
_ID_COUNTER = itertools.count()


def _new_id_tag() -> None:
    """A forked worker gets a tag of its own (ids stay unique across workers)."""
    _ID_TAG[0] = os.urandom(5).hex()


os.register_at_fork(after_in_child=_new_id_tag)
