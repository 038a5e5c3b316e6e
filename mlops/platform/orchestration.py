"""Flow runs and deployments through the Prefect API: start, follow, pause, resume.

Every function takes a synchronous Prefect client (:func:`prefect_client`) as its first
keyword argument and raises the platform errors of :mod:`mlops.errors`:
:class:`NotFoundError` for an unknown deployment or flow run, :class:`InvalidRequestError`
for parameters the deployment does not take, :class:`OrchestratorUnavailableError` when
the API does not answer (raised by :func:`prefect_client` for anything done inside it).

Deployments are named ``<flow>/<name>`` (DESIGN.md): ``materialize/<view>``,
``train/<model>``, ``evaluate/<model>``, ``retrain/<model>``, ``monitor/<model>``.

Progress: a flow publishes a Prefect progress artifact (``create_progress_artifact``,
for example ``train-<model>-progress``, dashes for underscores); :func:`flow_run_status`
reports the most recently updated one of the run, and 100 once the run has completed.

Pausing is Prefect's deployment pause (the UI's toggle): the scheduler stops creating
runs and deletes the runs it had already scheduled; each schedule keeps its own
``active`` flag, runs started by hand (:func:`start_flow_run`) and event triggers still
run. Resuming lets the scheduler fill the schedule again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import httpx

from mlops.errors import (
    InvalidRequestError,
    NotFoundError,
    OrchestratorUnavailableError,
)
from mlops.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

logger = logging.getLogger(__name__)

FlowKind = Literal["materialize", "train", "evaluate", "retrain", "monitor"]
FLOW_KINDS: tuple[FlowKind, ...] = ("materialize", "train", "evaluate", "retrain", "monitor")
"""The platform's flows; a deployment of each is named ``<flow>/<view or model>``."""

MANUAL_TAG = "mlops.trigger:manual"
"""Tag of the flow runs started through :func:`start_flow_run`."""


@dataclass(frozen=True)
class FlowRunRef:
    """A flow run just created from a deployment."""

    id: str
    name: str
    deployment: str
    state: str
    scheduled_start: datetime | None


@dataclass(frozen=True)
class FlowRunStatus:
    """Where a flow run stands. ``progress`` is a percentage (None: the run published none)."""

    id: str
    name: str
    flow: str | None
    deployment: str | None
    state_type: str | None
    state_name: str | None
    state_message: str | None
    parameters: dict[str, Any]
    tags: list[str]
    created: datetime | None
    expected_start: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    run_seconds: float
    progress: float | None
    progress_key: str | None


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule of a deployment (``schedule`` is its cron, interval or rrule, as text)."""

    id: str
    schedule: str
    active: bool
    slug: str | None


@dataclass(frozen=True)
class DeploymentState:
    """A deployment, whether it is paused, and its schedules."""

    id: str
    name: str
    paused: bool
    work_pool: str | None
    parameters: dict[str, Any]
    schedules: list[ScheduleInfo] = field(default_factory=list)


# --- the client -------------------------------------------------------------------------
@contextmanager
def prefect_client(
    settings: Settings, *, require_server: bool = False
) -> Iterator[SyncPrefectClient]:
    """A synchronous Prefect client for the block, closed after it.

    It talks to ``settings.prefect.api_url``; when that is unset, to Prefect's own
    configuration (``PREFECT_API_URL``, or its ephemeral API), unless ``require_server``
    (the app: an API of its own would hold runs no worker sees), which raises
    :class:`OrchestratorUnavailableError` then. A transport error or a 5xx of the API
    inside the block becomes :class:`OrchestratorUnavailableError` naming the URL.
    """
    from prefect.client.orchestration import SyncPrefectClient, get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    url = settings.prefect.api_url
    if url:
        client = SyncPrefectClient(
            url, api_key=PREFECT_API_KEY.value(), auth_string=PREFECT_API_AUTH_STRING.value()
        )
    elif require_server:
        raise OrchestratorUnavailableError(
            "no Prefect API is configured: set MLOPS_PREFECT__API_URL to the Prefect server"
        )
    else:
        client = get_client(sync_client=True)
    where = str(client.api_url)
    try:
        with client:
            yield client
    except httpx.TransportError as exc:
        raise OrchestratorUnavailableError(
            f"the Prefect API at {where} is unreachable ({type(exc).__name__}: {exc})"
        ) from exc
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code < 500:
            raise
        raise OrchestratorUnavailableError(
            f"the Prefect API at {where} answered {exc.response.status_code}: "
            f"{exc.response.text[:300]}"
        ) from exc


# --- names ------------------------------------------------------------------------------
def deployment_name(kind: str, name: str) -> str:
    """``<kind>/<name>``, for one of :data:`FLOW_KINDS` (else :class:`InvalidRequestError`)."""
    if kind not in FLOW_KINDS:
        raise InvalidRequestError(f"unknown flow {kind!r}: expected one of {', '.join(FLOW_KINDS)}")
    return f"{kind}/{name}"


def _split(deployment: str) -> tuple[str, str]:
    flow, sep, name = deployment.partition("/")
    if not sep or not flow or not name or "/" in name:
        raise InvalidRequestError(
            f"deployment name {deployment!r} is not '<flow>/<name>' (e.g. 'train/fraud_detector')"
        )
    return flow, name


def _read_deployment(client: SyncPrefectClient, deployment: str) -> DeploymentResponse:
    from prefect.exceptions import ObjectNotFound

    _split(deployment)
    try:
        return client.read_deployment_by_name(deployment)
    except ObjectNotFound as exc:
        raise NotFoundError(
            "deployment", deployment, "register it with `mlops deploy` or `prefect deploy --all`"
        ) from exc


def _uuid(flow_run_id: str | UUID) -> UUID:
    if isinstance(flow_run_id, UUID):
        return flow_run_id
    try:
        return UUID(flow_run_id)
    except ValueError as exc:
        raise InvalidRequestError(f"flow run id {flow_run_id!r} is not a UUID") from exc


# --- flow runs --------------------------------------------------------------------------
def start_flow_run(
    client: SyncPrefectClient,
    *,
    deployment: str,
    parameters: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (MANUAL_TAG,),
) -> FlowRunRef:
    """Create a flow run of ``deployment`` (``<flow>/<name>``) scheduled now; a worker
    (or ``mlops deploy --serve``) of its pool picks it up. ``parameters`` override the
    deployment's; a name the flow does not take is :class:`InvalidRequestError`."""
    from prefect.exceptions import PrefectHTTPStatusError

    found = _read_deployment(client, deployment)
    given = dict(parameters or {})
    schema = found.parameter_openapi_schema or {}
    known = schema.get("properties")
    if isinstance(known, dict):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InvalidRequestError(
                f"deployment {deployment!r} takes no parameter {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(sorted(known)) or 'none'}"
            )
    try:
        run = client.create_flow_run_from_deployment(found.id, parameters=given, tags=list(tags))
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (409, 422):
            detail = exc.response.json().get("detail", exc.response.text)
            raise InvalidRequestError(
                f"deployment {deployment!r} refused the parameters: {detail}"
            ) from exc
        raise
    logger.info("started flow run %s (%s) of %s", run.id, run.name, deployment)
    return FlowRunRef(
        id=str(run.id),
        name=run.name,
        deployment=deployment,
        state=run.state.type.value if run.state else "SCHEDULED",
        scheduled_start=run.expected_start_time,
    )


def trigger_now(
    client: SyncPrefectClient, *, deployment: str, parameters: Mapping[str, Any] | None = None
) -> FlowRunRef:
    """Run ``deployment`` now, outside its schedule (even while it is paused): a flow run
    scheduled for now, tagged :data:`MANUAL_TAG`."""
    return start_flow_run(client, deployment=deployment, parameters=parameters)


def _progress(client: SyncPrefectClient, run_id: UUID) -> tuple[float | None, str | None]:
    """The value and key of the run's most recently updated progress artifact."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    if not found:
        return None, None
    try:
        value = float(found[0].data)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, found[0].key
    return value, found[0].key


def flow_run_status(client: SyncPrefectClient, *, flow_run_id: str | UUID) -> FlowRunStatus:
    """State, times, parameters and progress of a flow run."""
    from prefect.exceptions import ObjectNotFound

    run_id = _uuid(flow_run_id)
    try:
        run = client.read_flow_run(run_id)
    except ObjectNotFound as exc:
        raise NotFoundError("flow run", str(run_id)) from exc
    flow_name: str | None = None
    deployment: str | None = None
    try:
        flow_name = client.read_flow(run.flow_id).name
        if run.deployment_id is not None:
            deployment = f"{flow_name}/{client.read_deployment(run.deployment_id).name}"
    except ObjectNotFound:  # deleted since the run was created
        pass
    progress, key = _progress(client, run_id)
    state = run.state
    state_type = state.type.value if state else None
    if state_type == "COMPLETED":
        progress = 100.0
    return FlowRunStatus(
        id=str(run.id),
        name=run.name,
        flow=flow_name,
        deployment=deployment,
        state_type=state_type,
        state_name=state.name if state else None,
        state_message=state.message if state else None,
        parameters=dict(run.parameters),
        tags=list(run.tags),
        created=run.created,
        expected_start=run.expected_start_time,
        start_time=run.start_time,
        end_time=run.end_time,
        run_seconds=run.total_run_time.total_seconds(),
        progress=progress,
        progress_key=key,
    )


# --- deployments ------------------------------------------------------------------------
def _schedule_text(schedule: Any) -> str:
    for attribute in ("cron", "interval", "rrule"):
        value = getattr(schedule, attribute, None)
        if value is not None:
            return f"{attribute} {value}"
    return str(schedule)


def deployment_state(client: SyncPrefectClient, *, deployment: str) -> DeploymentState:
    """Whether ``deployment`` is paused, and its schedules."""
    found = _read_deployment(client, deployment)
    schedules = client.read_deployment_schedules(found.id)
    return DeploymentState(
        id=str(found.id),
        name=deployment,
        paused=bool(found.paused),
        work_pool=found.work_pool_name,
        parameters=dict(found.parameters),
        schedules=[
            ScheduleInfo(
                id=str(s.id), schedule=_schedule_text(s.schedule), active=s.active, slug=s.slug
            )
            for s in schedules
        ],
    )


def pause_schedules(client: SyncPrefectClient, *, deployment: str) -> DeploymentState:
    """Pause ``deployment``: no more scheduled runs (idempotent)."""
    found = _read_deployment(client, deployment)
    client.pause_deployment(found.id)
    logger.info("paused the schedules of %s", deployment)
    return deployment_state(client, deployment=deployment)


def resume_schedules(client: SyncPrefectClient, *, deployment: str) -> DeploymentState:
    """Resume ``deployment``: its active schedules create runs again (idempotent)."""
    found = _read_deployment(client, deployment)
    client.resume_deployment(found.id)
    logger.info("resumed the schedules of %s", deployment)
    return deployment_state(client, deployment=deployment)
