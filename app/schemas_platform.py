"""Request and response bodies of the platform routes (:mod:`app.routes.platform`).

Responses are read from the dataclasses of :mod:`mlops.platform` (``from_attributes``).
Metric values that are not finite (NaN, inf) are sent as ``null``.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in value.items()
        }
    return value


Metrics = Annotated[dict[str, float | None], BeforeValidator(_finite)]
Parameters = Annotated[
    dict[str, Any],
    Field(description="Flow parameters (override the deployment's)", examples=[{"epochs": 3}]),
]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- requests ---------------------------------------------------------------------------
class FlowRunRequest(BaseModel):
    """Parameters of the flow run to start (empty: the deployment's)."""

    model_config = ConfigDict(extra="forbid")

    parameters: Parameters = Field(default_factory=dict)


class PromoteRequest(BaseModel):
    """Which version becomes ``champion``, who asks and why (recorded as version tags)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"version": 3, "by": "alice", "reason": "A/B win"}]},
    )

    version: int = Field(ge=1, description="The model version to promote")
    by: str = Field(default="api", min_length=1, max_length=200, description="Who promotes")
    reason: str = Field(min_length=1, max_length=1000, description="Why")


class RollbackRequest(BaseModel):
    """Who rolls back and why (recorded as tags of the version that becomes champion)."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="api", min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=1000)


# --- responses --------------------------------------------------------------------------
class FlowRunRef(_Out):
    id: str = Field(description="The flow run id: follow it with GET /flow-runs/{id}")
    name: str
    deployment: str
    state: str
    scheduled_start: datetime | None


class FlowRunStatus(_Out):
    id: str
    name: str
    flow: str | None
    deployment: str | None
    state_type: str | None = Field(description="SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED…")
    state_name: str | None
    state_message: str | None
    parameters: dict[str, Any]
    tags: list[str]
    created: datetime | None
    expected_start: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    run_seconds: float
    progress: float | None = Field(
        description="Percent done, from the run's latest progress artifact (100 once "
        "completed; null when the run published none)"
    )
    progress_key: str | None


class Schedule(_Out):
    id: str
    schedule: str
    active: bool
    slug: str | None


class DeploymentState(_Out):
    id: str
    name: str
    paused: bool
    work_pool: str | None
    parameters: dict[str, Any]
    schedules: list[Schedule]


class ModelSummary(_Out):
    name: str
    description: str
    aliases: dict[str, str] = Field(description="{alias: version}, e.g. champion, challenger")
    latest_version: str | None
    created: datetime | None
    updated: datetime | None
    tags: dict[str, str]


class ModelVersion(_Out):
    name: str
    version: str
    aliases: list[str]
    status: str
    run_id: str | None
    created: datetime | None
    feature_views: list[str] = Field(description="name@version of the views trained on")
    data_window: str | None
    metrics: Metrics = Field(description="Latest metrics of the version's MLflow run")
    tags: dict[str, str]


class Promotion(_Out):
    name: str
    version: str = Field(description="The champion now")
    previous: str | None = Field(description="The champion before")
    kind: Literal["promote", "rollback"]
    changed: bool = Field(description="False when the version already was champion")
    by: str
    reason: str
    at: datetime
    history: list[str] = Field(description="Earlier champions, oldest first (rollback targets)")


class Run(_Out):
    run_id: str
    run_name: str | None
    experiment_id: str
    status: str
    start_time: datetime | None
    end_time: datetime | None
    metrics: Metrics
    params: dict[str, str]
    tags: dict[str, str]


class RunComparison(_Out):
    metrics: list[str]
    runs: list[Run]
    best: dict[str, str] = Field(description="{metric: run_id with its highest value}")
    differing_params: dict[str, dict[str, str | None]] = Field(
        description="{param: {run_id: value}} for params that differ between the runs"
    )


class Materialization(_Out):
    version: str
    start: datetime
    end: datetime
    rows: int
    partitions: int
    entities_online: int
    max_event_ts: datetime | None
    flow_run_id: str | None
    finished_at: datetime


class ViewVersion(_Out):
    version: str
    current: bool
    first_registered_at: datetime
    last_seen_at: datetime


class ViewStats(_Out):
    name: str
    version: str
    entity: str
    features: int
    ttl_s: int
    owner: str
    versions: list[ViewVersion]
    last_materialization: Materialization | None
    offline_partitions: int
    offline_first_day: date | None
    offline_last_day: date | None
    offline_unreadable_days: list[date]
    online_newest_event: datetime | None
    online_version: str | None
    online_age_s: float | None
    freshness: Literal["fresh", "stale", "empty", "unknown"]
    online_error: str | None
