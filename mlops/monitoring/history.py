"""The monitor's history: the ``monitoring_runs`` table, beside the request log.

The table lives in the request log's database and is created by its migrations
(revision 0003): :func:`history_engine` connects and brings the schema up to date. The
monitor flow writes one row per run (:func:`record_run`); the app and the console read
them back (:func:`recent_runs`). Times are stored and returned as UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from mlops.serving.request_log import upgrade_schema
from mlops.sqldb import as_utc, create_engine

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

monitoring_runs = sa.Table(
    "monitoring_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("drift_share", sa.Float, nullable=True),
    sa.Column("drifted_features", _JSON, nullable=False),
    sa.Column("per_feature", _JSON, nullable=False),
    sa.Column("live_accuracy", sa.Float, nullable=True),
    sa.Column("n_labelled", sa.Integer, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=True),
    sa.Column("flow_run_id", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class MonitoringRun:
    """One run of the monitor flow over a window of the request log."""

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    n_rows: int
    drift_share: float | None
    """None when the window was too small to judge drift."""
    drifted_features: list[str]
    per_feature: dict[str, dict[str, Any]]
    """``{feature: {method, score, threshold, drifted}}`` (empty without a drift report)."""
    live_accuracy: float | None
    n_labelled: int
    report_uri: str | None = None
    flow_run_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None
    """Set by the database."""


_FIELDS = tuple(f.name for f in fields(MonitoringRun))
_TIMES = ("window_start", "window_end", "created_at")


def history_engine(url: str) -> sa.Engine:
    """An engine on the request log's database at ``url``, its schema brought up to date."""
    engine = create_engine(url)
    upgrade_schema(engine)
    return engine


def record_run(engine: sa.Engine, run: MonitoringRun) -> int:
    """Insert ``run``; returns its id."""
    row = {name: getattr(run, name) for name in _FIELDS if name != "id"}
    for name in _TIMES:
        row[name] = as_utc(row[name])
    with engine.begin() as conn:
        result = conn.execute(monitoring_runs.insert().values(**row))
        key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def recent_runs(
    engine: sa.Engine, *, model_name: str | None = None, limit: int = 50
) -> list[MonitoringRun]:
    """The newest runs first (of ``model_name`` only when given)."""
    query = sa.select(monitoring_runs).order_by(
        monitoring_runs.c.created_at.desc(), monitoring_runs.c.id.desc()
    )
    if model_name is not None:
        query = query.where(monitoring_runs.c.model_name == model_name)
    with engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).mappings().all()
    return [_run(row) for row in rows]


def _run(row: sa.RowMapping) -> MonitoringRun:
    values = {name: row[name] for name in _FIELDS}
    for name in _TIMES:
        values[name] = as_utc(values[name])
    return MonitoringRun(**values)


def latest_per_model(engine: sa.Engine) -> list[MonitoringRun]:
    """The newest run of each model (one query), ordered by model name: what the app
    exports to Prometheus as the current drift share and live accuracy."""
    newest = (
        sa.select(monitoring_runs.c.model_name, sa.func.max(monitoring_runs.c.id).label("id"))
        .group_by(monitoring_runs.c.model_name)
        .subquery()
    )
    query = (
        sa.select(monitoring_runs)
        .join(newest, monitoring_runs.c.id == newest.c.id)
        .order_by(monitoring_runs.c.model_name)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_run(row) for row in rows]
