"""One record per deployment, from ``prefect.yaml``, from code or from the Prefect API.

``prefect deploy --all`` and ``mlops deploy`` must register the same deployments. Each
``summarize_*`` function turns its source into ``{"<flow>/<name>": record}`` with the
fields that matter (entrypoint, parameters, work pool and job variables, cron schedules
with time zone, triggers with their parameters, concurrency limit, tags, description,
pull steps), so two sources compare with ``==`` and a difference names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deployments import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prefect.client.orchestration import PrefectClient
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events.schemas.automations import EventTrigger
    from prefect.events.schemas.events import ResourceSpecification

PREFECT_YAML = PROJECT_DIR / "prefect.yaml"
Record = dict[str, Any]


def load_prefect_yaml(path: Path = PREFECT_YAML) -> dict[str, Any]:
    """``prefect.yaml`` as a mapping (YAML anchors and merge keys resolved)."""
    with path.open(encoding="utf-8") as fh:
        loaded = yaml.safe_load(fh)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("deployments"), list):
        raise ValueError(f"{path}: expected a mapping with a `deployments:` list")
    return loaded


def _pull(directory: str | Path) -> list[dict[str, Any]]:
    return [{"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}]


def _resources(spec: ResourceSpecification | dict[str, Any]) -> dict[str, Any]:
    from prefect.events.schemas.events import ResourceSpecification

    if isinstance(spec, ResourceSpecification):
        dumped: dict[str, Any] = spec.model_dump(mode="json")
        return dumped
    return dict(spec)


def _trigger(
    trigger: EventTrigger,
    *,
    name: str | None,
    enabled: bool,
    parameters: dict[str, Any] | None,
    job_variables: dict[str, Any] | None,
) -> Record:
    return {
        "name": name,
        "enabled": enabled,
        "match": _resources(trigger.match),
        "match_related": (
            [_resources(spec) for spec in trigger.match_related]
            if isinstance(trigger.match_related, list)
            else _resources(trigger.match_related)
        ),
        "after": sorted(trigger.after),
        "expect": sorted(trigger.expect),
        "for_each": sorted(trigger.for_each),
        "posture": str(trigger.posture.value),
        "threshold": trigger.threshold,
        "within": trigger.within.total_seconds(),
        "parameters": parameters,
        "job_variables": job_variables,
    }


def _deployment_trigger(raw: Any) -> Record:
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    trigger = (
        raw
        if isinstance(raw, DeploymentEventTrigger)
        else DeploymentEventTrigger.model_validate(raw)
    )
    return _trigger(
        trigger,
        name=trigger.name,
        enabled=trigger.enabled,
        parameters=trigger.parameters,
        job_variables=trigger.job_variables,
    )


def summarize_yaml(
    config: dict[str, Any] | None = None, *, project_dir: Path = PROJECT_DIR
) -> dict[str, Record]:
    """The deployments of ``prefect.yaml`` (the flow name is the entrypoint's function).

    A deployment without a ``pull`` section gets the step ``prefect deploy`` generates
    when it runs in ``project_dir``: set the working directory there.
    """
    config = config if config is not None else load_prefect_yaml()
    records: dict[str, Record] = {}
    for entry in config["deployments"]:
        flow_name = entry["entrypoint"].rsplit(":", 1)[1]
        limit = entry.get("concurrency_limit")
        if isinstance(limit, int):
            limit = {"limit": limit, "collision_strategy": "ENQUEUE"}
        pool = entry.get("work_pool") or {}
        records[f"{flow_name}/{entry['name']}"] = {
            "entrypoint": entry["entrypoint"],
            "parameters": entry.get("parameters") or {},
            "work_pool": pool.get("name"),
            "job_variables": pool.get("job_variables") or {},
            "schedules": [
                {
                    "cron": schedule["cron"],
                    "timezone": schedule.get("timezone"),
                    "active": schedule.get("active", True),
                }
                for schedule in entry.get("schedules") or []
            ],
            "triggers": [_deployment_trigger(raw) for raw in entry.get("triggers") or []],
            "concurrency": (
                {"limit": limit["limit"], "collision_strategy": limit["collision_strategy"]}
                if limit
                else None
            ),
            "tags": sorted(entry.get("tags") or []),
            "description": entry.get("description"),
            "pull_steps": entry.get("pull") or config.get("pull") or _pull(project_dir),
        }
    return records


def summarize_code(deployments: Iterable[RunnerDeployment]) -> dict[str, Record]:
    """The deployments built in code (:func:`deployments.build_deployments`)."""
    from prefect.client.schemas.schedules import CronSchedule

    records: dict[str, Record] = {}
    for deployment in deployments:
        schedules = []
        for item in deployment.schedules or []:
            schedule = item.schedule
            if not isinstance(schedule, CronSchedule):
                raise ValueError(f"{deployment.full_name}: only cron schedules are declared")
            schedules.append(
                {"cron": schedule.cron, "timezone": schedule.timezone, "active": item.active}
            )
        options = deployment.concurrency_options
        steps = deployment.storage.to_pull_step() if deployment.storage else []
        records[deployment.full_name] = {
            "entrypoint": deployment.entrypoint,
            "parameters": deployment.parameters,
            "work_pool": deployment.work_pool_name,
            "job_variables": deployment.job_variables,
            "schedules": schedules,
            "triggers": [_deployment_trigger(trigger) for trigger in deployment.triggers],
            "concurrency": (
                {
                    "limit": deployment.concurrency_limit,
                    "collision_strategy": (
                        options.collision_strategy.value if options else "ENQUEUE"
                    ),
                }
                if deployment.concurrency_limit is not None
                else None
            ),
            "tags": sorted(deployment.tags),
            "description": deployment.description,
            "pull_steps": steps if isinstance(steps, list) else [steps],
        }
    return records


async def summarize_api(client: PrefectClient, names: Iterable[str]) -> dict[str, Record]:
    """The deployments ``names`` as the Prefect API holds them, with their automations."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger

    automations = await client.read_automations()
    records: dict[str, Record] = {}
    for full_name in names:
        deployment = await client.read_deployment_by_name(full_name)
        triggers = []
        for automation in automations:
            runs = [
                action
                for action in automation.actions
                if isinstance(action, RunDeployment) and action.deployment_id == deployment.id
            ]
            if runs and isinstance(automation.trigger, EventTrigger):
                triggers.append(
                    _trigger(
                        automation.trigger,
                        name=automation.name,
                        enabled=automation.enabled,
                        parameters=runs[0].parameters,
                        job_variables=runs[0].job_variables,
                    )
                )
        limit = deployment.global_concurrency_limit
        options = deployment.concurrency_options
        records[full_name] = {
            "entrypoint": deployment.entrypoint,
            "parameters": deployment.parameters,
            "work_pool": deployment.work_pool_name,
            "job_variables": deployment.job_variables,
            "schedules": [
                {
                    "cron": getattr(item.schedule, "cron", None),
                    "timezone": getattr(item.schedule, "timezone", None),
                    "active": item.active,
                }
                for item in deployment.schedules
            ],
            "triggers": sorted(triggers, key=lambda t: str(t["name"])),
            "concurrency": (
                {
                    "limit": limit.limit,
                    "collision_strategy": (
                        options.collision_strategy.value if options else "ENQUEUE"
                    ),
                }
                if limit is not None
                else None
            ),
            "tags": sorted(deployment.tags),
            "description": deployment.description,
            "pull_steps": deployment.pull_steps or [],
        }
    return records
