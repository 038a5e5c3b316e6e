"""Work pools and the GPU pool's global concurrency limit.

``local`` is a process pool (flows run as subprocesses of ``prefect worker start --pool
local`` in this checkout). The GPU pool (``gpu``) runs on Docker (a device request per
container) or on Kubernetes (``nvidia.com/gpu`` limits, node selector and tolerations as
variables); its base job template sets ``MLOPS_TRAINING__GPU_POOL`` to the pool's name,
so training holds the global concurrency limit ``gpu:<pool>`` (limit = GPUs of the pool)
while it runs and two trainings never share one GPU.

The templates are JSON files in ``deployments/job_templates/``. The Prefect server takes
any pool type with a valid base job template, so the pools can be created without
``prefect-docker`` / ``prefect-kubernetes`` installed; the worker machines need them.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlops.errors import ConfigurationError
from mlops.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "job_templates"
GpuPoolType = Literal["docker", "kubernetes"]
GPU_POOL_TYPES: tuple[GpuPoolType, ...] = ("docker", "kubernetes")
TEMPLATE_FILES = {
    "process": "process.json",
    "docker": "docker-gpu.json",
    "kubernetes": "kubernetes-gpu.json",
}
GPU_POOL_ENV = "MLOPS_TRAINING__GPU_POOL"


def gpu_limit_name(pool: str) -> str:
    """Name of the global concurrency limit a training on ``pool`` holds."""
    return f"gpu:{pool}"


@cache
def _read_template(pool_type: str) -> dict[str, Any]:
    try:
        name = TEMPLATE_FILES[pool_type]
    except KeyError:
        known = ", ".join(sorted(TEMPLATE_FILES))
        raise ConfigurationError(
            f"no job template for pool type {pool_type!r}; known: {known}"
        ) from None
    with (TEMPLATES_DIR / name).open(encoding="utf-8") as fh:
        template: dict[str, Any] = json.load(fh)
    return template


def job_template(pool_type: str, pool_name: str) -> dict[str, Any]:
    """The base job template of a pool of ``pool_type`` named ``pool_name``.

    A GPU template's default ``env`` names the pool in ``MLOPS_TRAINING__GPU_POOL``
    (deployments' ``env`` job variables are merged over it by the worker).
    """
    template = copy.deepcopy(_read_template(pool_type))
    env = template["variables"]["properties"].get("env", {})
    if pool_type in GPU_POOL_TYPES:
        env["default"] = {**env.get("default", {}), GPU_POOL_ENV: pool_name}
    return template


@dataclass(frozen=True)
class PoolPlan:
    name: str
    type: str
    base_job_template: dict[str, Any]


def pool_plans(settings: Settings, gpu_pool_type: GpuPoolType = "docker") -> list[PoolPlan]:
    """The pools the deployments use: ``local`` (process) and the GPU pool."""
    if gpu_pool_type not in GPU_POOL_TYPES:
        raise ConfigurationError(
            f"unknown GPU pool type {gpu_pool_type!r}; choose one of {', '.join(GPU_POOL_TYPES)}"
        )
    orchestration = settings.orchestration
    if orchestration.local_pool == orchestration.gpu_pool:
        raise ConfigurationError(
            f"MLOPS_ORCHESTRATION__LOCAL_POOL and MLOPS_ORCHESTRATION__GPU_POOL are both "
            f"{orchestration.local_pool!r}: the process pool and the GPU pool need two names"
        )
    return [
        PoolPlan(orchestration.local_pool, "process", job_template("process", "")),
        PoolPlan(
            orchestration.gpu_pool,
            gpu_pool_type,
            job_template(gpu_pool_type, orchestration.gpu_pool),
        ),
    ]


def ensure_pools(
    client: SyncPrefectClient,
    settings: Settings,
    *,
    gpu_pool_type: GpuPoolType = "docker",
    update: bool = False,
) -> dict[str, str]:
    """Create the work pools that are missing (``update``: also reset existing templates).

    An existing pool of another type than planned is left alone and reported. Returns
    what happened per pool: ``created``, ``updated``, ``exists`` or ``exists (type …)``.
    """
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    outcome: dict[str, str] = {}
    for plan in pool_plans(settings, gpu_pool_type):
        try:
            existing = client.read_work_pool(plan.name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=plan.name, type=plan.type, base_job_template=plan.base_job_template
                )
            )
            outcome[plan.name] = "created"
            continue
        if existing.type != plan.type:
            outcome[plan.name] = f"exists (type {existing.type}, not {plan.type}: left alone)"
        elif update:
            client.update_work_pool(
                plan.name, WorkPoolUpdate(base_job_template=plan.base_job_template)
            )
            outcome[plan.name] = "updated"
        else:
            outcome[plan.name] = "exists"
    return outcome


def ensure_gpu_limit(client: SyncPrefectClient, settings: Settings) -> tuple[str, int]:
    """Create or update the global concurrency limit ``gpu:<pool>`` to ``gpus_per_pool``."""
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    name = gpu_limit_name(settings.orchestration.gpu_pool)
    limit = settings.orchestration.gpus_per_pool
    try:
        current = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
        )
        return name, limit
    if current.limit != limit or not current.active:
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
        )
    return name, limit
