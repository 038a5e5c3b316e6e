"""Deployments defined in code, named as DESIGN.md fixes them, the same set as ``prefect.yaml``.

For every feature view (code and ``features.yaml``): ``materialize/<view>`` (incremental,
hourly). For every model spec: ``train/<model>`` (on demand, ``local`` pool),
``train/<model>-gpu`` (on demand, the GPU pool, ``device="cuda"``), ``evaluate/<model>``
(on demand), ``monitor/<model>`` (hourly) and ``retrain/<model>`` (weekly, and on the
events ``mlops.model.drift-detected`` / ``mlops.model.performance-degraded`` of that
model, with a cooldown: see :func:`retrain_trigger`). Once: ``cleanup/crashed``, on every
crash of a run of those flows (:func:`cleanup_trigger`).

:func:`build_deployments` returns them unapplied; ``mlops deploy`` creates the work pools
and the GPU pool's global concurrency limit (:mod:`deployments.pools`) and registers
them with the Prefect API; ``prefect deploy --all`` registers the same set from
``prefect.yaml`` (a test holds the two to the same fields, :mod:`deployments.agreement`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.events import MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED
from mlops.settings import Settings
from mlops.specs import SPECS, all_views, get_spec

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""Working directory of the ``local`` pool's flow runs: this checkout (their pull step)."""
IMAGE_WORKDIR = "/opt/mlops"
"""Working directory of the GPU pools' flow runs: where the image holds the project."""

ENTRYPOINTS = {
    "materialize": "flows/materialize.py:materialize",
    "train": "flows/train.py:train",
    "evaluate": "flows/evaluate.py:evaluate",
    "monitor": "flows/monitor.py:monitor",
    "retrain": "flows/retrain.py:retrain",
    "cleanup": "flows/cleanup.py:cleanup",
}
LIFECYCLE_FLOWS = tuple(name for name in ENTRYPOINTS if name != "cleanup")
"""The flows whose crashed runs ``cleanup/crashed`` closes (never its own)."""
CLEANUP_DEPLOYMENT = "crashed"

MATERIALIZE_CRON = "5 * * * *"  # hourly, after the hour's events have landed
MONITOR_CRON = "15 * * * *"  # hourly, after materialization
RETRAIN_CRON = "0 3 * * 1"  # weekly, Monday 03:00
RETRAIN_EVENTS = (MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED)
RETRAIN_COOLDOWN = timedelta(hours=6)
"""After a trigger fires, further events of the same model are ignored this long."""


def retrain_trigger(model_name: str) -> DeploymentEventTrigger:
    """The event trigger of ``retrain/<model>``: one retraining per burst of events.

    A reactive trigger with ``threshold: 1`` fires on the first drift-detected or
    performance-degraded event of ``mlops.model.<model>``, then opens its next window
    ``within`` (the cooldown) after that event: every event of the model before then is
    ignored. The run gets ``reason`` = the event's name and ``event_payload`` = its
    payload as a dict (a JSON-rendered Jinja template, parsed by the server).
    """
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger.model_validate(
        {
            "name": f"retrain {model_name} on drift or degraded performance",
            "enabled": True,
            "match": {"prefect.resource.id": f"mlops.model.{model_name}"},
            "expect": list(RETRAIN_EVENTS),
            "posture": "Reactive",
            "threshold": 1,
            "within": RETRAIN_COOLDOWN.total_seconds(),
            "parameters": {
                "model_name": model_name,
                "reason": "{{ event.event }}",
                "event_payload": {
                    "__prefect_kind": "json",
                    "value": {
                        "__prefect_kind": "jinja",
                        "template": "{{ event.payload | tojson }}",
                    },
                },
            },
        }
    )


def cleanup_trigger() -> DeploymentEventTrigger:
    """The event trigger of ``cleanup/crashed``: every ``prefect.flow-run.Crashed`` event
    of a run of the lifecycle flows (the related flow resource, by name), one cleanup run
    each, given the event's resource id (``prefect.flow-run.<uuid>``). Runs of ``cleanup``
    itself are not matched, so a crashing cleanup cannot start another."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger.model_validate(
        {
            "name": "close what a crashed flow run left open",
            "enabled": True,
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {
                "prefect.resource.role": "flow",
                "prefect.resource.name": list(LIFECYCLE_FLOWS),
            },
            "expect": ["prefect.flow-run.Crashed"],
            "posture": "Reactive",
            "threshold": 1,
            "within": 0,
            "parameters": {"flow_run_id": "{{ event.resource.id }}"},
        }
    )


def cleanup_deployment(settings: Settings) -> RunnerDeployment:
    """``cleanup/crashed``: on every crash of a lifecycle flow run, on the CPU pool."""
    from flows.cleanup import cleanup

    return _deployment(
        cleanup,
        CLEANUP_DEPLOYMENT,
        parameters={},
        description="Close the subflow runs and MLflow runs a crashed flow run left open "
        "(its own hook does not run when a Docker or Kubernetes worker's container is "
        "killed). On every prefect.flow-run.Crashed of materialize, train, evaluate, "
        "monitor and retrain.",
        tags=["mlops", "cleanup"],
        work_pool=settings.orchestration.local_pool,
        triggers=[cleanup_trigger()],
    )


def _deployment(
    flow: Any,
    name: str,
    *,
    parameters: dict[str, Any],
    description: str,
    tags: list[str],
    work_pool: str,
    job_variables: dict[str, Any] | None = None,
    crons: tuple[str, ...] = (),
    timezone: str = "UTC",
    triggers: list[DeploymentEventTrigger] | None = None,
    one_at_a_time: bool = False,
    directory: str | Path = PROJECT_DIR,
) -> RunnerDeployment:
    """One deployment of ``flow`` on ``work_pool``, with the entrypoint ``prefect.yaml`` has."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.runner.storage import LocalStorage
    from prefect.schedules import Cron

    deployment = flow.to_deployment(
        name=name,
        parameters=parameters,
        description=description,
        tags=tags,
        work_pool_name=work_pool,
        job_variables=job_variables or {},
        schedules=[Cron(cron, timezone=timezone) for cron in crons],
        triggers=triggers or [],
        concurrency_limit=(
            ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
            if one_at_a_time
            else None
        ),
    )
    deployment.entrypoint = ENTRYPOINTS[deployment.flow_name]
    deployment.storage = LocalStorage(str(directory))
    return deployment


def retrain_deployment(model_name: str, settings: Settings) -> RunnerDeployment:
    """``retrain/<model>``: weekly and on the model's events, never two at once.

    ``concurrency_limit`` 1 with ``CANCEL_NEW``: a run that would start while another
    retraining of the model runs (the schedule during a triggered run, or a trigger after
    the cooldown while a long run goes on) is cancelled instead of queued.
    """
    from flows.retrain import retrain

    orchestration = settings.orchestration
    return _deployment(
        retrain,
        model_name,
        parameters={"model_name": model_name, "reason": "schedule"},
        description=f"Retrain {model_name}: train, evaluate, promote through the gates. "
        "Weekly, and on drift-detected / performance-degraded (one run per burst).",
        tags=["mlops", f"model:{model_name}"],
        work_pool=orchestration.local_pool,
        crons=(RETRAIN_CRON,),
        timezone=orchestration.timezone,
        triggers=[retrain_trigger(model_name)],
        one_at_a_time=True,
    )


def model_deployments(model_name: str, settings: Settings) -> list[RunnerDeployment]:
    """The deployments of one model spec: train (CPU and GPU), evaluate, monitor, retrain."""
    from flows.evaluate import evaluate
    from flows.monitor import monitor
    from flows.train import train

    orchestration = settings.orchestration
    tags = ["mlops", f"model:{model_name}"]
    return [
        _deployment(
            train,
            model_name,
            parameters={"model_name": model_name},
            description=f"Train {model_name} and register it as challenger.",
            tags=tags,
            work_pool=orchestration.local_pool,
        ),
        _deployment(
            train,
            f"{model_name}-gpu",
            parameters={"model_name": model_name, "device": "cuda"},
            description=f"Train {model_name} on a GPU of the {orchestration.gpu_pool} pool "
            f"(one training per GPU: global concurrency limit gpu:{orchestration.gpu_pool}).",
            tags=[*tags, "gpu"],
            work_pool=orchestration.gpu_pool,
            directory=IMAGE_WORKDIR,
        ),
        _deployment(
            evaluate,
            model_name,
            parameters={"model_name": model_name},
            description=f"Evaluate {model_name}'s challenger; promote through the gates.",
            tags=tags,
            work_pool=orchestration.local_pool,
        ),
        _deployment(
            monitor,
            model_name,
            parameters={"model_name": model_name},
            description=f"Monitor {model_name}: drift and live accuracy of the logged "
            "requests; emits drift-detected / performance-degraded. Hourly.",
            tags=tags,
            work_pool=orchestration.local_pool,
            crons=(MONITOR_CRON,),
            timezone=orchestration.timezone,
        ),
        retrain_deployment(model_name, settings),
    ]


def view_deployment(view_name: str, settings: Settings) -> RunnerDeployment:
    """``materialize/<view>``: incremental (from the last materialized day), hourly."""
    from flows.materialize import materialize

    return _deployment(
        materialize,
        view_name,
        parameters={"view_name": view_name, "mode": "incremental"},
        description=f"Materialize feature view {view_name}: incremental, from the last "
        "materialized day. Hourly.",
        tags=["mlops", f"view:{view_name}"],
        work_pool=settings.orchestration.local_pool,
        crons=(MATERIALIZE_CRON,),
        timezone=settings.orchestration.timezone,
    )


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """Every deployment, unapplied: per view ``materialize``, per model spec the rest."""
    deployments = [view_deployment(view.name, settings) for view in all_views(settings)]
    for spec_name in SPECS:
        deployments.extend(model_deployments(get_spec(spec_name, settings).name, settings))
    deployments.append(cleanup_deployment(settings))
    return deployments
