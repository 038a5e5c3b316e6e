"""A flow run killed midway ends Crashed, never RUNNING, and so does all it left open.

The real thing: ``crash-probe`` (below: an MLflow run opened the way training opens
one, then a subflow that does the same and sleeps) is served by a Prefect runner in a
subprocess, as ``mlops deploy --serve`` does; its flow-run process is killed with
SIGKILL. The runner marks the run Crashed and runs its ``on_crashed`` hook, which must
close the subflow run and fail both MLflow runs. The selection parts of
:mod:`mlops.lifecycle` are checked on their own too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run, RunData, RunInfo, RunTag
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Cancelling, Completed, Crashed, Failed, Pending, Running

from mlops.lifecycle import (
    closing_state,
    flow_run_tags,
    mlflow_status,
    on_flow_crashed,
    open_flow_runs,
    runs_to_terminate,
    terminated_by,
)
from mlops.processes import terminate
from mlops.registry import configure_mlflow, mlflow_client
from mlops.settings import Settings
from mlops.tags import RunTags

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


# --- the probe: what the runner serves -----------------------------------------------------
@task(cache_policy=NO_CACHE)
def open_probe_run(role: str) -> str:
    """An MLflow run tagged as ``start_run`` tags a training run, plus this process's id."""
    settings = Settings()
    run = mlflow_client(settings).create_run(
        configure_mlflow(settings),
        run_name=f"probe-{role}",
        tags={**flow_run_tags(), "probe.role": role, "probe.pid": str(os.getpid())},
    )
    return str(run.info.run_id)


@flow(name="crash-probe-child", on_crashed=[on_flow_crashed], on_cancellation=[on_flow_crashed])
def crash_probe_child(seconds: float = 90) -> None:
    open_probe_run("child")
    time.sleep(seconds)


@flow(name="crash-probe", on_crashed=[on_flow_crashed], on_cancellation=[on_flow_crashed])
def crash_probe(seconds: float = 90) -> None:
    open_probe_run("parent")
    crash_probe_child(seconds)


# --- the real thing ------------------------------------------------------------------------
class Runner:
    """``crash-probe`` served by a Prefect runner subprocess, its output in a log file."""

    def __init__(self, name: str, log: Path) -> None:
        from prefect.settings import PREFECT_API_URL

        self.name, self.log = name, log
        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        # Loaded from its entrypoint, as a worker does (not pickled from this process).
        script = (
            "from prefect import flow\n"
            f"probe = flow.from_source({str(REPO)!r}, "
            "'tests/integration/test_crash.py:crash_probe')\n"
            f"probe.serve(name={name!r}, print_starting_message=False)\n"
        )
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script], cwd=REPO, env=env, stdout=out, stderr=out
            )

    def wait(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """``condition()`` once it is truthy; a failure with the runner's log after
        ``timeout`` seconds or when the runner exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"the runner exited ({self.process.returncode}) before {what}:\n{self}")
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; runner log:\n{self}")

    def stop(self) -> None:
        terminate(self.process, timeout_s=30)

    def __str__(self) -> str:
        return self.log.read_text(errors="replace")[-20000:]


@pytest.fixture
def runner(prefect_api: None, mlops_home: Path, tmp_path: Path) -> Iterator[Runner]:
    served = Runner(f"probe-{uuid.uuid4().hex[:8]}", tmp_path / "runner.log")
    try:
        yield served
    finally:
        served.stop()


def _probe_runs(client: MlflowClient, root_flow_run_id: str) -> dict[str, Run]:
    experiment = client.get_experiment_by_name(Settings().mlflow.experiment)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RunTags.ROOT_FLOW_RUN_ID}` = '{root_flow_run_id}'",
    )
    return {run.data.tags["probe.role"]: run for run in runs}


def _ancestors(pid: int) -> Iterator[int]:
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        yield pid


def test_a_killed_flow_run_is_crashed_with_its_subflow_and_mlflow_runs(runner: Runner) -> None:
    mlflow = mlflow_client(Settings())
    with get_client(sync_client=True) as client:
        deployment = runner.wait(
            lambda: _deployment_id(f"crash-probe/{runner.name}"), 120, "the deployment"
        )
        flow_run = client.create_flow_run_from_deployment(deployment)
    root = str(flow_run.id)

    def both_running() -> dict[str, Run] | None:
        runs = _probe_runs(mlflow, root)
        started = set(runs) == {"parent", "child"}
        return runs if started and all(r.info.status == "RUNNING" for r in runs.values()) else None

    runs = runner.wait(both_running, 120, "the parent's and the subflow's MLflow runs")
    pid = int(runs["child"].data.tags["probe.pid"])
    assert runs["parent"].data.tags["probe.pid"] == str(pid), "a subflow runs in-process"
    assert runner.process.pid in _ancestors(pid), "the probe is not the runner's flow-run process"
    assert runs["parent"].data.tags[RunTags.FLOW_RUN_ID] == root
    child_flow_run_id = runs["child"].data.tags[RunTags.FLOW_RUN_ID]
    assert child_flow_run_id not in ("", root)

    os.kill(pid, signal.SIGKILL)

    def final(flow_run_id: str) -> FlowRun | None:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
        return run if run.state is not None and run.state.is_final() else None

    killed = runner.wait(lambda: final(root), 60, "the killed flow run to end")
    assert killed.state is not None and killed.state.type == StateType.CRASHED, killed.state
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])
            )
        )
    assert [str(c.id) for c in children] == [child_flow_run_id]
    child = runner.wait(lambda: final(child_flow_run_id), 60, "the subflow run to end")
    assert child.state is not None and child.state.type == StateType.CRASHED, child.state
    assert root in (child.state.message or ""), child.state.message

    def ended() -> dict[str, Run] | None:
        found = _probe_runs(mlflow, root)
        return found if all(r.info.status != "RUNNING" for r in found.values()) else None

    for role, run in runner.wait(ended, 60, "the MLflow runs to end").items():
        assert run.info.status == "FAILED", (role, run.info.status)
        assert run.data.tags[RunTags.TERMINATED_BY] == "prefect:Crashed", (role, run.data.tags)
        assert root in run.data.tags[RunTags.TERMINATED_REASON], (role, run.data.tags)


def _deployment_id(name: str) -> uuid.UUID | None:
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).id
        except ObjectNotFound:
            return None


def test_the_hook_never_raises_and_says_what_it_could_not_do(
    prefect_api: None, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", "nosuchscheme://nowhere")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        lost = FlowRun(flow_id=uuid.uuid4(), name="lost-run", state=Crashed(message="gone"))
        on_flow_crashed(crash_probe, lost, Crashed(message="gone"))
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any("could not end the MLflow runs" in m and str(lost.id) in m for m in messages), (
        messages
    )


def test_every_flow_carries_the_hook_for_crashes_and_cancellations() -> None:
    from flows.evaluate import evaluate
    from flows.materialize import materialize
    from flows.monitor import monitor
    from flows.retrain import retrain
    from flows.train import train

    for each in (train, evaluate, materialize, monitor, retrain):
        assert on_flow_crashed in each.on_crashed_hooks, each.name
        assert on_flow_crashed in each.on_cancellation_hooks, each.name


# --- the pure parts ------------------------------------------------------------------------
def _flow_run(state: Any, name: str = "r") -> FlowRun:
    return FlowRun(flow_id=uuid.uuid4(), name=name, state=state)


def _mlflow_run(run_id: str, status: str, **tags: str) -> Run:
    info = RunInfo(run_id, "0", "me", status, 0, None, "active", run_name=run_id)
    return Run(info, RunData(tags=[RunTag(k, v) for k, v in tags.items()]))


def test_only_flow_runs_in_no_final_state_are_closed() -> None:
    runs = {
        "running": _flow_run(Running()),
        "pending": _flow_run(Pending()),
        "no-state": _flow_run(None),
        "completed": _flow_run(Completed()),
        "failed": _flow_run(Failed()),
        "crashed": _flow_run(Crashed()),
        "cancelled": _flow_run(Cancelled()),
    }
    kept = {run.id for run in open_flow_runs(runs.values())}
    assert kept == {runs[k].id for k in ("running", "pending", "no-state")}


def test_a_subflow_is_crashed_or_cancelled_as_its_parent_with_its_name() -> None:
    parent = _flow_run(None, name="brave-otter")
    crashed = closing_state(parent, Crashed(message="exit code -9"))
    assert crashed.type == StateType.CRASHED
    assert crashed.message and "'brave-otter'" in crashed.message
    assert str(parent.id) in crashed.message and "exit code -9" in crashed.message
    for cancel in (Cancelling(), Cancelled()):
        assert closing_state(parent, cancel).type == StateType.CANCELLED
        assert mlflow_status(cancel) == "KILLED"
    assert mlflow_status(Crashed()) == "FAILED"
    assert terminated_by(Crashed()) == "prefect:Crashed"
    assert terminated_by(Cancelling()) == "prefect:Cancelling"


def test_mlflow_runs_are_chosen_by_flow_run_or_root_and_only_while_running() -> None:
    root, child, other = "root-id", "child-id", "other-id"
    flow_run_tag, root_tag = RunTags.FLOW_RUN_ID, RunTags.ROOT_FLOW_RUN_ID
    runs = [
        _mlflow_run("mine", "RUNNING", **{flow_run_tag: root, root_tag: root}),
        _mlflow_run("child", "RUNNING", **{flow_run_tag: child, root_tag: root}),
        _mlflow_run("deeper", "RUNNING", **{flow_run_tag: "unseen", root_tag: root}),
        _mlflow_run("old-tags", "RUNNING", **{flow_run_tag: child}),
        _mlflow_run("finished", "FINISHED", **{flow_run_tag: root, root_tag: root}),
        _mlflow_run("failed", "FAILED", **{flow_run_tag: child, root_tag: root}),
        _mlflow_run("other", "RUNNING", **{flow_run_tag: other, root_tag: other}),
        _mlflow_run("untagged", "RUNNING"),
        _mlflow_run("outside-flow", "RUNNING", **{flow_run_tag: "", root_tag: ""}),
    ]
    chosen = runs_to_terminate(runs, {root, child}, root)
    assert [r.info.run_id for r in chosen] == ["mine", "child", "deeper", "old-tags"]
    # a subflow's own hook: its runs, never its parent's or siblings' (same root)
    assert [r.info.run_id for r in runs_to_terminate(runs, {child}, child)] == [
        "child",
        "old-tags",
    ]
