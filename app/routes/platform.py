"""Platform routes: flow runs, deployments, models, MLflow runs, feature store statistics.

Thin wrappers over :mod:`mlops.platform` (the console uses the same functions). Every
route needs the bearer token, reads included: they expose and steer the platform. The
functions are synchronous and run in a worker thread. Flow runs are created through the
Prefect API at ``MLOPS_PREFECT__API_URL`` (503 when it is unset or does not answer);
the app never imports the flows.

Errors: an unknown deployment, flow run, model, version, experiment or run → 404 naming
it; bad input → 422; nothing to roll back to or a version serving cannot load → 409;
the Prefect API unreachable → 503 naming its URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from uuid import UUID

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, HTTPException, Query, status
from fastapi import Path as PathParam

from app import schemas_platform as s
from app.deps import SettingsDep
from app.security import require_token
from mlops.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorUnavailableError,
)
from mlops.platform import features, models, orchestration, runs
from mlops.registry import mlflow_client
from mlops.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient

T = TypeVar("T")


PathName = Annotated[
    str,
    PathParam(
        pattern=r"^[A-Za-z0-9_.\-]([A-Za-z0-9_.\- ]{0,254}[A-Za-z0-9_.\-])?$",
        description="A flow, deployment, model or experiment name: letters, digits, "
        "'_', '.', '-' and spaces (not at either end).",
    ),
]

router = APIRouter(tags=["platform"], dependencies=[Depends(require_token)])

_AUTH: dict[int | str, dict[str, str]] = {
    401: {"description": "No bearer token."},
    403: {"description": "The bearer token is not valid."},
    422: {"description": "Invalid input (the field or value is named)."},
}
_NOT_FOUND: dict[int | str, dict[str, str]] = {404: {"description": "Not found (named)."}}
_PREFECT: dict[int | str, dict[str, str]] = {
    **_AUTH,
    **_NOT_FOUND,
    503: {"description": "The Prefect API is not configured or does not answer."},
}
_MLFLOW: dict[int | str, dict[str, str]] = {**_AUTH, **_NOT_FOUND}

FlowKind = Literal["materialize", "train", "evaluate", "retrain", "monitor"]
Name = Annotated[str, Query(min_length=1, max_length=256)]


async def _run(work: Callable[[], T]) -> T:
    """``work`` in a worker thread; platform errors become HTTP errors."""
    try:
        return await anyio.to_thread.run_sync(work)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except InvalidRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except OrchestratorUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc


def _with_prefect(settings: Settings, op: Callable[[SyncPrefectClient], T]) -> Callable[[], T]:
    def work() -> T:
        with orchestration.prefect_client(settings, require_server=True) as client:
            return op(client)

    return work


def _with_mlflow(settings: Settings, op: Callable[[MlflowClient], T]) -> Callable[[], T]:
    return lambda: op(mlflow_client(settings))


# --- flow runs and deployments ----------------------------------------------------------
async def _deployment(
    settings: Settings, flow: str, name: str, op: Callable[..., Any]
) -> s.DeploymentState:
    """``op(client, deployment="<flow>/<name>")`` on the Prefect API, as a DeploymentState."""
    found = await _run(_with_prefect(settings, lambda c: op(c, deployment=f"{flow}/{name}")))
    return s.DeploymentState.model_validate(found)


@router.post(
    "/flows/{kind}/{name}/runs",
    response_model=s.FlowRunRef,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a flow run of the deployment <kind>/<name>",
    responses=_PREFECT,
)
async def start_flow_run(
    kind: FlowKind,
    name: PathName,
    settings: SettingsDep,
    body: Annotated[s.FlowRunRequest | None, Body()] = None,
) -> s.FlowRunRef:
    """Materialize a view, train, evaluate, retrain or monitor a model: creates a flow run
    of the deployment ``<kind>/<name>`` (e.g. ``train/fraud_detector``) scheduled now, for a
    worker of its pool. Follow it with ``GET /flow-runs/{id}``."""
    deployment = f"{kind}/{name}"
    parameters = body.parameters if body else {}
    ref = await _run(
        _with_prefect(
            settings,
            lambda c: orchestration.start_flow_run(c, deployment=deployment, parameters=parameters),
        )
    )
    return s.FlowRunRef.model_validate(ref)


@router.get(
    "/flow-runs/{flow_run_id}",
    response_model=s.FlowRunStatus,
    summary="State and progress of a flow run",
    responses=_PREFECT,
)
async def flow_run_status(flow_run_id: UUID, settings: SettingsDep) -> s.FlowRunStatus:
    """The run's state, times, parameters, and its progress in percent (from the latest
    progress artifact it published)."""
    found = await _run(
        _with_prefect(settings, lambda c: orchestration.flow_run_status(c, flow_run_id=flow_run_id))
    )
    return s.FlowRunStatus.model_validate(found)


@router.get(
    "/deployments/{flow}/{name}",
    response_model=s.DeploymentState,
    summary="A deployment: paused or not, its schedules",
    responses=_PREFECT,
)
async def deployment_state(
    flow: PathName, name: PathName, settings: SettingsDep
) -> s.DeploymentState:
    """Whether the deployment ``<flow>/<name>`` is paused, its schedules and parameters."""
    return await _deployment(settings, flow, name, orchestration.deployment_state)


@router.post(
    "/deployments/{flow}/{name}/pause",
    response_model=s.DeploymentState,
    summary="Pause a deployment's schedules",
    responses=_PREFECT,
)
async def pause(flow: PathName, name: PathName, settings: SettingsDep) -> s.DeploymentState:
    """Prefect's deployment pause: no more scheduled runs (those already scheduled are
    deleted). Runs started by hand and event triggers still run. Idempotent."""
    return await _deployment(settings, flow, name, orchestration.pause_schedules)


@router.post(
    "/deployments/{flow}/{name}/resume",
    response_model=s.DeploymentState,
    summary="Resume a deployment's schedules",
    responses=_PREFECT,
)
async def resume(flow: PathName, name: PathName, settings: SettingsDep) -> s.DeploymentState:
    """Undo a pause: the scheduler fills the active schedules again. Idempotent."""
    return await _deployment(settings, flow, name, orchestration.resume_schedules)


@router.post(
    "/deployments/{flow}/{name}/run",
    response_model=s.FlowRunRef,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Run any deployment now",
    responses=_PREFECT,
)
async def trigger_now(
    flow: PathName,
    name: PathName,
    settings: SettingsDep,
    body: Annotated[s.FlowRunRequest | None, Body()] = None,
) -> s.FlowRunRef:
    """A flow run of ``<flow>/<name>`` scheduled now, outside its schedule (even paused)."""
    parameters = body.parameters if body else {}
    ref = await _run(
        _with_prefect(
            settings,
            lambda c: orchestration.trigger_now(
                c, deployment=f"{flow}/{name}", parameters=parameters
            ),
        )
    )
    return s.FlowRunRef.model_validate(ref)


# --- models -----------------------------------------------------------------------------
@router.get("/models", response_model=list[s.ModelSummary], summary="Registered models")
async def list_models(settings: SettingsDep) -> list[s.ModelSummary]:
    """Every registered model with its aliases and newest version."""
    found = await _run(_with_mlflow(settings, models.list_models))
    return [s.ModelSummary.model_validate(m) for m in found]


@router.get(
    "/models/{name}/versions",
    response_model=list[s.ModelVersion],
    summary="Versions of a model, newest first",
    responses=_MLFLOW,
)
async def model_versions(
    name: PathName,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Newest versions shown")] = 100,
) -> list[s.ModelVersion]:
    """Each version's aliases, the metrics of its MLflow run, feature views, data window
    and tags."""
    found = await _run(
        _with_mlflow(settings, lambda c: models.model_versions(c, name=name, limit=limit))
    )
    return [s.ModelVersion.model_validate(v) for v in found]


@router.post(
    "/models/{name}/promote",
    response_model=s.Promotion,
    summary="Make a version the champion",
    responses={**_MLFLOW, 409: {"description": "Serving could not load that version."}},
)
async def promote(name: PathName, body: s.PromoteRequest, settings: SettingsDep) -> s.Promotion:
    """Move the ``champion`` alias to ``version`` (the replaced champion goes onto the
    model's ``champion_history`` tag), tag the version with who and why, and emit
    ``mlops.model.promoted``: serving apps following the model reload it."""
    result = await _run(
        _with_mlflow(
            settings,
            lambda c: models.promote(
                c,
                name=name,
                version=str(body.version),
                by=body.by,
                reason=body.reason,
                events_api_url=settings.prefect.api_url,
            ),
        )
    )
    return s.Promotion.model_validate(result)


@router.post(
    "/models/{name}/rollback",
    response_model=s.Promotion,
    summary="Give the champion alias back to the previous champion",
    responses={**_MLFLOW, 409: {"description": "No earlier champion is recorded."}},
)
async def rollback(name: PathName, body: s.RollbackRequest, settings: SettingsDep) -> s.Promotion:
    """Take the last version off the model's ``champion_history`` and make it champion
    again (repeat to go further back); emits ``mlops.model.promoted``."""
    result = await _run(
        _with_mlflow(
            settings,
            lambda c: models.rollback(
                c,
                name=name,
                by=body.by,
                reason=body.reason,
                events_api_url=settings.prefect.api_url,
            ),
        )
    )
    return s.Promotion.model_validate(result)


# --- MLflow runs ------------------------------------------------------------------------
@router.get(
    "/experiments/{name}/runs",
    response_model=list[s.Run],
    summary="Search an experiment's runs",
    responses=_MLFLOW,
)
async def list_runs(
    name: PathName,
    settings: SettingsDep,
    filter: Annotated[
        str,
        Query(
            max_length=2000,
            description="MLflow search filter",
            examples=["metrics.val_roc_auc > 0.8 and params.epochs = '8'"],
        ),
    ] = "",
    order_by: Annotated[
        list[str] | None,
        Query(
            description="MLflow order clauses, repeatable", examples=["metrics.val_roc_auc DESC"]
        ),
    ] = None,
    max_results: Annotated[int, Query(ge=1, le=runs.MAX_RESULTS)] = 100,
) -> list[s.Run]:
    """Runs of the experiment matching ``filter``, newest first unless ``order_by``."""
    order = order_by or ["attributes.start_time DESC"]
    found = await _run(
        _with_mlflow(
            settings,
            lambda c: runs.list_runs(
                c, experiment=name, filter_string=filter, order_by=order, max_results=max_results
            ),
        )
    )
    return [s.Run.model_validate(r) for r in found]


@router.get(
    "/runs/compare",
    response_model=s.RunComparison,
    summary="Compare runs side by side",
    responses=_MLFLOW,
)
async def compare_runs(
    settings: SettingsDep,
    ids: Annotated[
        list[str], Query(min_length=1, description="Run ids (repeat, or comma-separated)")
    ],
    metrics: Annotated[
        list[str] | None, Query(description="Metrics to compare (default: all)")
    ] = None,
) -> s.RunComparison:
    """The runs' metrics, the best run per metric (highest value) and the params that
    differ between them."""
    run_ids = [part.strip() for item in ids for part in item.split(",") if part.strip()]
    wanted = [part.strip() for item in metrics or [] for part in item.split(",") if part.strip()]
    found = await _run(
        _with_mlflow(settings, lambda c: runs.compare_runs(c, run_ids=run_ids, metrics=wanted))
    )
    return s.RunComparison.model_validate(found)


@router.get(
    "/experiments/{name}/best",
    response_model=s.Run,
    summary="The best finished run by a metric",
    responses=_MLFLOW,
)
async def best_run(
    name: PathName,
    settings: SettingsDep,
    metric: Annotated[str, Query(min_length=1, max_length=250, examples=["val_roc_auc"])],
    mode: Literal["max", "min"] = "max",
    filter: Annotated[str, Query(max_length=2000, description="Extra MLflow filter")] = "",
) -> s.Run:
    """The finished run of the experiment with the highest (``max``) or lowest (``min``)
    value of ``metric``; 404 when no finished run logged it."""
    found = await _run(
        _with_mlflow(
            settings,
            lambda c: runs.best_run(
                c, experiment=name, metric=metric, mode=mode, filter_string=filter
            ),
        )
    )
    return s.Run.model_validate(found)


# --- features ---------------------------------------------------------------------------
@router.get(
    "/features/stats",
    response_model=list[s.ViewStats],
    summary="Feature views: versions, materializations, offline and online state",
    responses=_AUTH,
)
async def feature_stats(settings: SettingsDep) -> list[s.ViewStats]:
    """Per view: current and registered versions, the last materialization, offline
    partitions and the online store's newest row and freshness (an unreachable online
    store is reported in ``online_error``, not as a failure)."""
    found = await _run(lambda: features.feature_store_stats(settings))
    return [s.ViewStats.model_validate(v) for v in found]
