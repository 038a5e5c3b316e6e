from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from mlops.errors import NoChampionError, RegistryError
from mlops.registry import CHAMPION, Tags, version_by_alias


@dataclass(frozen=True, slots=True)
class ChampionRef:
    version: str
    feature_names: list[str]
    run_id: str


def _transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a registry that did not answer, not a registry that answered 'no'."""
    try:
        state.result()
    except RegistryError:
        return False
    except Exception:
        return True
    return False


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_transient,
)
def champion_version(client: MlflowClient, name: str) -> ChampionRef:
    """The version of ``name`` aliased ``champion`` and the features it scores, in order."""
    mv = version_by_alias(client, name, CHAMPION)
    if mv is None:
        raise NoChampionError(
            f"model {name!r} has no {CHAMPION!r} version to monitor: train and evaluate it "
            "first (mlops train, then mlops evaluate), or check the model name"
        )
    raw = (mv.tags or {}).get(Tags.FEATURE_NAMES)
    if not raw:
        raise RegistryError(
            f"{name} v{mv.version} has no {Tags.FEATURE_NAMES!r} tag: the request log's "
            "features cannot be named (was it registered by the train flow?)"
        )
    try:
        names = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(
            f"{name} v{mv.version}: tag {Tags.FEATURE_NAMES!r} is not a JSON list: {raw!r}"
        ) from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RegistryError(
            f"{name} v{mv.version}: tag {Tags.FEATURE_NAMES!r} is not a list of names: {raw!r}"
        )
    return ChampionRef(version=str(mv.version), feature_names=names, run_id=str(mv.run_id or ""))
