"""Close what a crashed flow run left open when its own hook could not.

Every lifecycle flow closes its subflow runs and MLflow runs itself when it crashes
(:func:`mlops.lifecycle.on_flow_crashed`), where Prefect runs its hooks: the runner of
``mlops up`` / ``mlops deploy --serve`` and a process worker. A Docker or Kubernetes
worker whose container was killed (out of memory, a lost node) only marks the run
Crashed. The ``cleanup/crashed`` deployment runs this flow on the event
``prefect.flow-run.Crashed`` of any run of the lifecycle flows (its trigger in
``prefect.yaml`` and :func:`deployments.cleanup_trigger`), on the CPU pool: it does the
same closing from there. What the hook closed already stays as it is.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client

from mlops.errors import ConfigurationError
from mlops.lifecycle import close_left_open

RESOURCE_PREFIX = "prefect.flow-run."


def flow_run_uuid(flow_run_id: str) -> UUID:
    """The flow run's id from a bare UUID or an event's resource id
    (``prefect.flow-run.<uuid>``); :class:`ConfigurationError` naming the value otherwise."""
    text = flow_run_id.strip().removeprefix(RESOURCE_PREFIX)
    try:
        return UUID(text)
    except ValueError:
        raise ConfigurationError(
            f"flow_run_id {flow_run_id!r} is neither a flow run's UUID nor "
            f"'{RESOURCE_PREFIX}<uuid>'"
        ) from None


@flow(name="cleanup", log_prints=False)
def cleanup(flow_run_id: str) -> dict[str, Any]:
    """Close the subflow runs and MLflow runs that the crashed or cancelled flow run
    ``flow_run_id`` left open (a UUID, or the event resource ``prefect.flow-run.<uuid>``).

    A run that is not Crashed or Cancelled is left alone (it may still be running).
    Returns what was done: the run's state, subflow runs closed, MLflow runs ended.
    """
    logger = get_run_logger()
    run_id = flow_run_uuid(flow_run_id)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    state = flow_run.state
    summary: dict[str, Any] = {
        "flow_run_id": str(run_id),
        "flow_run": flow_run.name,
        "state": state.name if state else None,
        "subflow_runs_closed": 0,
        "mlflow_runs_ended": 0,
    }
    if state is None or not (state.is_crashed() or state.is_cancelled()):
        logger.info(
            "flow run %r (%s) is %s, not Crashed or Cancelled: nothing to close",
            flow_run.name,
            run_id,
            summary["state"],
        )
        return summary
    closed, ended = close_left_open(flow_run, state, logger)
    summary.update(subflow_runs_closed=closed, mlflow_runs_ended=ended)
    logger.info(
        "flow run %r (%s, %s): %d subflow runs closed, %d MLflow runs ended",
        flow_run.name,
        run_id,
        state.name,
        closed,
        ended,
    )
    return summary
