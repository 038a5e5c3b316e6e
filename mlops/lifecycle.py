"""What a flow run leaves behind when it dies, and the Prefect state hook that closes it.

A flow run killed midway (SIGKILL, out of memory, a lost node) runs none of its own
``finally`` blocks: the subflow runs it ran in-process stay RUNNING in the Prefect API
and the MLflow runs it opened stay RUNNING in the tracking store. Prefect marks the
killed run itself Crashed, and runs its ``on_crashed`` hooks where it still can: the
runner of ``mlops deploy --serve`` (``flow.serve``) and a process worker do it in their
own process once the flow-run process has exited non-zero; the flow engine does it
in-process for a crash it survives (an interrupt, a base exception). Every flow carries
:func:`on_flow_crashed` as its ``on_crashed`` and ``on_cancellation`` hook; it closes
the rest from there. A Docker or Kubernetes worker runs no hooks: the ``cleanup`` flow
(``flows/cleanup.py``), triggered by the run's Crashed event, calls
:func:`close_left_open` instead.

MLflow runs are found by the tags :func:`flow_run_tags` puts on every run a flow opens
(:class:`~mlops.tags.RunTags`). Prefect's flow retries apply to Failed runs only, never
to Crashed ones: a crashed run stays crashed, to be started again.

The selection (:func:`open_flow_runs`, :func:`runs_to_terminate`, :func:`closing_state`)
is pure; the hook does the reading and writing around it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from uuid import UUID

from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus, ViewType
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.responses import SetStateStatus
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Crashed

from mlops.registry import mlflow_client
from mlops.settings import Settings
from mlops.tags import RunTags

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.orchestration import SyncPrefectClient

_log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

MAX_DEPTH = 16  # subflow levels searched below the crashed run
PAGE = 200  # flow runs or MLflow runs read per request
REASON_CHARS = 500


def flow_run_tags() -> dict[str, str]:
    """The tags that tie an MLflow run to the flow run opening it and to the root of that
    run's subflow tree: what :func:`on_flow_crashed` looks for. Empty values outside a
    flow run."""
    return {
        RunTags.FLOW_RUN_ID: str(current_flow_run.get_id() or ""),
        RunTags.ROOT_FLOW_RUN_ID: str(current_flow_run.get_root_flow_run_id() or ""),
    }


# --- the pure part: what to close, and how -------------------------------------------------


def is_cancellation(state: State) -> bool:
    return state.is_cancelling() or state.is_cancelled()


def open_flow_runs(runs: Iterable[FlowRun]) -> list[FlowRun]:
    """The runs not in a final state (Completed, Failed, Cancelled, Crashed)."""
    return [run for run in runs if run.state is None or not run.state.is_final()]


def closing_state(parent: FlowRun, state: State) -> State:
    """What a subflow run left open by ``parent`` entering ``state`` becomes: Cancelled
    when the parent was cancelled, else Crashed, with a message naming the parent."""
    message = (
        f"Parent flow run {parent.name!r} ({parent.id}) entered {state.name}"
        f"{' (' + state.message + ')' if state.message else ''}: this subflow run ended with it."
    )
    return Cancelled(message=message) if is_cancellation(state) else Crashed(message=message)


def runs_to_terminate(
    runs: Iterable[Run], flow_run_ids: Collection[str], root_flow_run_id: str
) -> list[Run]:
    """The RUNNING MLflow runs opened by one of ``flow_run_ids``, or anywhere in the tree
    whose root is ``root_flow_run_id`` (a subflow the API search did not reach)."""
    chosen = []
    for run in runs:
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            continue
        tags = run.data.tags
        if tags.get(RunTags.FLOW_RUN_ID) in flow_run_ids or (
            root_flow_run_id and tags.get(RunTags.ROOT_FLOW_RUN_ID) == root_flow_run_id
        ):
            chosen.append(run)
    return chosen


def mlflow_status(state: State) -> str:
    """KILLED for a cancelled flow run, FAILED for a crashed one."""
    return "KILLED" if is_cancellation(state) else "FAILED"


def terminated_by(state: State) -> str:
    return f"prefect:{state.name}"


def termination_reason(flow_run: FlowRun, state: State) -> str:
    reason = f"flow run {flow_run.name!r} ({flow_run.id}) {state.name}"
    if state.message:
        reason += f": {state.message}"
    return reason[:REASON_CHARS]


# --- the hook ------------------------------------------------------------------------------


def on_flow_crashed(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    """Close what ``flow_run`` left open on entering ``state`` (Crashed, or Cancelling /
    Cancelled for ``on_cancellation``): its descendant subflow runs that are not final
    become Crashed (Cancelled), and the MLflow runs they opened that are still RUNNING
    become FAILED (KILLED), tagged ``mlops.terminated_by``.

    Never raises: a hook that raises would bury the crash under its own error; what it
    could not do is logged as a warning on the flow run.
    """
    logger: Logger = _log
    with suppress(Exception):  # else the module's logger
        logger = flow_run_logger(flow_run, flow)
    close_left_open(flow_run, state, logger)


def close_left_open(flow_run: FlowRun, state: State, logger: Logger = _log) -> tuple[int, int]:
    """What :func:`on_flow_crashed` does, from anywhere: close the subflow runs and the
    MLflow runs ``flow_run`` left open on entering ``state``. Idempotent (what is closed
    stays as it is). Returns (subflow runs closed, MLflow runs ended); never raises.

    The ``cleanup`` flow (``flows/cleanup.py``) calls it for a run whose own hook could not
    run: a Docker or Kubernetes worker marks a killed container's run Crashed without
    running its hooks.
    """
    closed, ended = 0, 0
    descendants: list[FlowRun] = []
    try:
        with get_client(sync_client=True) as prefect:
            descendants = list(_descendants(prefect, flow_run.id))
            closed = _close_flow_runs(prefect, open_flow_runs(descendants), flow_run, state, logger)
    except Exception as exc:
        logger.warning(
            "could not close the subflow runs of flow run %s (%s): %s",
            flow_run.id,
            state.name,
            exc,
            exc_info=True,
        )
    try:
        ids = {str(flow_run.id), *(str(run.id) for run in descendants)}
        mlflow = mlflow_client(Settings())
        for run in runs_to_terminate(_running_mlflow_runs(mlflow), ids, str(flow_run.id)):
            _terminate(mlflow, run.info.run_id, flow_run, state)
            ended += 1
            logger.warning(
                "MLflow run %s (%s) left RUNNING by flow run %s: marked %s",
                run.info.run_id,
                run.info.run_name,
                flow_run.id,
                mlflow_status(state),
            )
    except Exception as exc:
        logger.warning(
            "could not end the MLflow runs of flow run %s (%s): %s",
            flow_run.id,
            state.name,
            exc,
            exc_info=True,
        )
    return closed, ended


def _descendants(client: SyncPrefectClient, root: UUID) -> Iterator[FlowRun]:
    """Every flow run below ``root``, level by level (a subflow's parent is a task run
    of its parent flow run; the API filters on the parent flow run)."""
    seen = {root}
    frontier = [root]
    for _ in range(MAX_DEPTH):
        if not frontier:
            return
        children = _read_children(client, frontier)
        frontier = [run.id for run in children if run.id not in seen]
        seen.update(frontier)
        yield from (run for run in children if run.id in frontier)


def _read_children(client: SyncPrefectClient, parents: list[UUID]) -> list[FlowRun]:
    query = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents))
    found: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(flow_run_filter=query, limit=PAGE, offset=len(found))
        found.extend(page)
        if len(page) < PAGE:
            return found


def _close_flow_runs(
    client: SyncPrefectClient,
    runs: list[FlowRun],
    parent: FlowRun,
    state: State,
    logger: Logger,
) -> int:
    closed = 0
    for run in runs:
        result = client.set_flow_run_state(run.id, closing_state(parent, state))
        if result.status == SetStateStatus.ACCEPT:
            closed += 1
            logger.warning(
                "subflow run %r (%s) left %s by flow run %s: marked %s",
                run.name,
                run.id,
                run.state.name if run.state else "without a state",
                parent.id,
                result.state.name if result.state else "?",
            )
        else:
            logger.warning(
                "the API answered %s to closing subflow run %r (%s): %s",
                result.status.value,
                run.name,
                run.id,
                result.details,
            )
    return closed


def _running_mlflow_runs(client: MlflowClient) -> Iterator[Run]:
    """The RUNNING runs of every active experiment (MLflow filters tags by equality only,
    so the tags are matched here, by :func:`runs_to_terminate`)."""
    experiments: list[str] = []
    token = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=token
        )
        experiments.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            break
    for start in range(0, len(experiments), 100):
        token = None
        while True:
            runs = client.search_runs(
                experiments[start : start + 100],
                filter_string="attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE,
                page_token=token,
            )
            yield from runs
            token = runs.token
            if not token:
                break


def _terminate(client: MlflowClient, run_id: str, flow_run: FlowRun, state: State) -> None:
    client.set_tag(run_id, RunTags.TERMINATED_BY, terminated_by(state))
    client.set_tag(run_id, RunTags.TERMINATED_REASON, termination_reason(flow_run, state))
    client.set_terminated(run_id, mlflow_status(state))
