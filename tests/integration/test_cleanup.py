"""``cleanup/crashed``: what a flow run killed without its hooks left open gets closed.

A Docker or Kubernetes worker whose container was killed marks the run Crashed and runs
none of its hooks. Here such a run is made through the real Prefect API (a test
harness) as the worker leaves it: a root run marked Crashed with a subflow run still
RUNNING under it, and two MLflow runs (root and subflow) still RUNNING in the home's
tracking store. The ``cleanup`` flow, run with the event's resource id as its trigger
passes it, must close all three, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed, Running

from flows.cleanup import cleanup, flow_run_uuid
from mlops.errors import ConfigurationError
from mlops.registry import configure_mlflow, mlflow_client
from mlops.settings import Settings
from mlops.tags import RunTags

pytestmark = pytest.mark.integration


@flow(name="train")
def killed_parent() -> None:
    """Never run: the flow whose runs are made through the API."""


@flow(name="train-child")
def killed_child() -> None:
    """Never run either."""


@task
def call_child() -> None:
    """The parent's task that ran the subflow."""


def _mlflow_run(client: MlflowClient, flow_run: UUID, root: UUID) -> str:
    run = client.create_run(
        configure_mlflow(Settings()),
        tags={RunTags.FLOW_RUN_ID: str(flow_run), RunTags.ROOT_FLOW_RUN_ID: str(root)},
    )
    return str(run.info.run_id)


@pytest.fixture
def left_open(prefect_api: None, mlops_home: Path) -> Iterator[tuple[UUID, UUID, list[str]]]:
    """A root run Crashed as a worker marks it, its subflow run RUNNING, two MLflow runs
    RUNNING: (root id, subflow id, MLflow run ids)."""
    with get_client(sync_client=True) as client:
        root = client.create_flow_run(killed_parent, state=Running())
        step = client.create_task_run(call_child, flow_run_id=root.id, dynamic_key="0")
        child = client.create_flow_run(killed_child, parent_task_run_id=step.id, state=Running())
        tracking = mlflow_client(Settings())
        runs = [_mlflow_run(tracking, root.id, root.id), _mlflow_run(tracking, child.id, root.id)]
        client.set_flow_run_state(
            root.id, Crashed(message="container killed (exit 137)"), force=True
        )
    yield root.id, child.id, runs


def test_cleanup_closes_what_a_run_killed_without_its_hooks_left_open(
    left_open: tuple[UUID, UUID, list[str]],
) -> None:
    root, child, runs = left_open
    tracking = mlflow_client(Settings())

    summary = cleanup(flow_run_id=f"prefect.flow-run.{root}")  # as the trigger passes it

    assert summary["state"] == "Crashed"
    assert (summary["subflow_runs_closed"], summary["mlflow_runs_ended"]) == (1, 2)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(child).state
    assert state is not None and state.type == StateType.CRASHED
    for run_id in runs:
        run = tracking.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags[RunTags.TERMINATED_BY] == "prefect:Crashed"
        assert "container killed" in run.data.tags[RunTags.TERMINATED_REASON]

    again = cleanup(flow_run_id=str(root))  # the hook or another cleanup got there first
    assert (again["subflow_runs_closed"], again["mlflow_runs_ended"]) == (0, 0)


def test_cleanup_leaves_a_run_that_did_not_crash_alone(prefect_api: None, mlops_home: Path) -> None:
    tracking = mlflow_client(Settings())
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(killed_parent, state=Running())
    run_id = _mlflow_run(tracking, running.id, running.id)

    summary = cleanup(flow_run_id=str(running.id))

    assert summary["state"] == "Running" and summary["mlflow_runs_ended"] == 0
    assert tracking.get_run(run_id).info.status == "RUNNING"


def test_a_flow_run_id_that_is_not_one_is_named() -> None:
    some = UUID("2c8d6f4e-0000-4000-8000-000000000001")
    assert flow_run_uuid(f"prefect.flow-run.{some}") == some == flow_run_uuid(f" {some} ")
    with pytest.raises(ConfigurationError, match=r"'prefect\.flow\.123' is neither"):
        flow_run_uuid("prefect.flow.123")
