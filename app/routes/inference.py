"""Inference routes: ``/predict``, ``/model``, ``/health``, ``/ready``.

Routes that run the model are plain ``def``: FastAPI runs them in its threadpool, so
onnxruntime and online-store reads never block the event loop. Domain errors become
HTTP errors here and only here. Every response computed from a model carries the
``X-Model-Version`` header.
"""

from __future__ import annotations

import logging

import numpy as np
from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError

from app.deps import ModelDep, OnlineStoreDep, SettingsDep
from app.schemas import (
    HealthResponse,
    ModelInfo,
    ModelRef,
    Prediction,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    ViewRefOut,
)
from mlops.errors import (
    EntityNotFoundError,
    FeatureStoreError,
    StoreUnavailableError,
    VersionMismatchError,
)
from mlops.features.online.base import OnlineStore
from mlops.serving import (
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    features_for_entities,
    rows_to_matrix,
)
from mlops.serving.runtime import POSITIVE_THRESHOLD
from mlops.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["inference"])

MODEL_VERSION_HEADER = "X-Model-Version"


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
    responses={
        404: {"description": "An entity has no features in the online store."},
        409: {"description": "Online features of another feature view version."},
        422: {"description": "Invalid body: the message and 'loc' name the field."},
        503: {"description": "No model is loaded, or the online store is unreachable."},
    },
)
def predict(
    body: PredictRequest,
    model: ModelDep,
    store: OnlineStoreDep,
    settings: SettingsDep,
    response: Response,
) -> PredictResponse:
    """Entity rows come from the online store; inline rows hold raw feature values."""
    limit = settings.serving.max_batch_rows
    if body.size > limit:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body",),
                    "msg": f"{body.size} rows (entities + rows) exceed the limit of {limit} "
                    "(MLOPS_SERVING__MAX_BATCH_ROWS)",
                    "input": None,
                    "ctx": {"max_length": limit},
                }
            ]
        )
    entities = body.entities or []
    rows = body.rows or []

    try:
        inline = rows_to_matrix(rows, model.feature_names)
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

    by_entity = np.empty((0, model.n_features), dtype=np.float32)
    if entities:
        by_entity = _entity_features(store=store, model=model, keys=entities, settings=settings)

    probabilities = model.predict(np.concatenate([by_entity, inline]))
    sources: list[tuple[str | None, int]] = [(key, i) for i, key in enumerate(entities)]
    sources += [(None, i) for i in range(len(rows))]
    predictions = [
        Prediction(
            entity=entity,
            index=index,
            label=1 if float(p[1]) >= POSITIVE_THRESHOLD else 0,
            probability=float(p[1]),
            probabilities=[float(p[0]), float(p[1])],
        )
        for (entity, index), p in zip(sources, probabilities, strict=True)
    ]
    response.headers[MODEL_VERSION_HEADER] = model.version
    return PredictResponse(
        model=ModelRef(name=model.name, version=model.version), predictions=predictions
    )


def _entity_features(
    *, store: OnlineStore, model: LoadedModel, keys: list[str], settings: Settings
) -> np.ndarray:
    """Features of ``keys`` from the online store, domain errors mapped to HTTP."""
    try:
        return features_for_entities(store, model, keys)
    except EntityNotFoundError as exc:
        raise _error(model, status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except VersionMismatchError as exc:
        raise _error(model, status.HTTP_409_CONFLICT, str(exc)) from exc
    except StoreUnavailableError as exc:
        kind = settings.online_store.type
        logger.warning("online store (%s) unavailable: %s", kind, exc)
        raise _error(
            model,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the online store ({kind}) is unreachable, so entity features cannot be read; "
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
        logger.error("online store read failed: %s", exc)
        raise _error(model, status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
