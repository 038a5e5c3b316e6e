"""The feature registry: which feature view versions exist, and what was materialized.

One SQL database (by default the datasets' catalog database: SQLite locally, Postgres in
production), two tables:

- ``feature_view_versions``: one row per (view name, version), with the definition, the
  features and the descriptive fields (owner, description, tags, source for display).
  A changed definition is a new version; old versions keep their rows. Registering a
  known version again only refreshes ``last_seen_at`` and the descriptive fields.
- ``feature_materializations``: one row per finished materialization of a version: the
  interval of whole UTC days written, rows, partitions, entities online, the newest
  event time written and the Prefect flow run.

Times are stored and returned as UTC (naive inputs are taken as UTC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mlops.errors import FeatureStoreError
from mlops.features.definition import FeatureView
from mlops.sqldb import as_utc, create_engine

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

view_versions_table = sa.Table(
    "feature_view_versions",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("entity", sa.String(255), nullable=False),
    sa.Column("timestamp_column", sa.String(255), nullable=False),
    sa.Column("created_timestamp_column", sa.String(255), nullable=True),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("ttl_s", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("first_registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
)

materializations_table = sa.Table(
    "feature_materializations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view", sa.String(255), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("partitions", sa.Integer, nullable=False),
    sa.Column("entities_online", sa.BigInteger, nullable=False),
    sa.Column("max_event_ts", sa.DateTime(timezone=True), nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ["view", "version"],
        ["feature_view_versions.name", "feature_view_versions.version"],
    ),
    sa.Index("ix_feature_materializations_view_version", "view", "version"),
)


@dataclass(frozen=True)
class MaterializationRecord:
    """One finished materialization: ``[start, end)`` is the interval of whole days written."""

    view: str
    version: str
    start: datetime
    end: datetime
    rows: int
    partitions: int
    entities_online: int
    max_event_ts: datetime | None
    flow_run_id: str | None
    finished_at: datetime


@dataclass(frozen=True)
class ViewRecord:
    """One registered version of a feature view; ``source`` is for display, never read.

    ``features`` holds one ``{name, dtype, kind, column, function, window_s}`` per feature
    (``kind`` is ``"column"`` or ``"aggregation"``; ``function`` and ``window_s`` are
    ``None`` for a column).
    """

    name: str
    version: str
    entity: str
    timestamp: str
    created_timestamp: str | None
    features: list[dict[str, object]]
    ttl_s: int
    owner: str
    description: str
    tags: dict[str, str]
    source: str
    first_registered_at: datetime
    last_seen_at: datetime


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def feature_entries(view: FeatureView) -> list[dict[str, object]]:
    """The view's features as the registry stores them, in the view's column order."""
    entries: list[dict[str, object]] = [
        {
            "name": name,
            "dtype": "float64",
            "kind": "column",
            "column": name,
            "function": None,
            "window_s": None,
        }
        for name in view.features
    ]
    entries += [
        {
            "name": agg.feature_name,
            "dtype": "float64",
            "kind": "aggregation",
            "column": agg.column,
            "function": agg.function,
            "window_s": int(agg.window.total_seconds()),
        }
        for agg in view.aggregations
    ]
    return entries


class FeatureRegistry:
    """Feature view versions and materializations on a SQLAlchemy engine (passed in)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create_tables(self) -> None:
        """Create the tables if they are missing (migrations come later)."""
        metadata.create_all(self.engine)

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()

    # --- views ----------------------------------------------------------------------
    @staticmethod
    def _view_record(row: sa.Row[Any]) -> ViewRecord:
        m = row._mapping
        return ViewRecord(
            name=m["name"],
            version=m["version"],
            entity=m["entity"],
            timestamp=m["timestamp_column"],
            created_timestamp=m["created_timestamp_column"],
            features=list(m["features"]),
            ttl_s=int(m["ttl_s"]),
            owner=m["owner"],
            description=m["description"],
            tags=dict(m["tags"]),
            source=m["source"],
            first_registered_at=as_utc(m["first_registered_at"]),
            last_seen_at=as_utc(m["last_seen_at"]),
        )

    def _get(self, conn: sa.Connection, name: str, version: str) -> ViewRecord | None:
        row = conn.execute(
            sa.select(view_versions_table).where(
                view_versions_table.c.name == name, view_versions_table.c.version == version
            )
        ).first()
        return None if row is None else self._view_record(row)

    def register(self, view: FeatureView) -> ViewRecord:
        """Record ``view``'s current version (idempotent); returns its row.

        A known version gets ``last_seen_at`` = now and the view's current owner,
        description, tags and source; its definition and first registration stay.
        """
        now = datetime.now(UTC)
        seen = {
            "owner": view.owner,
            "description": view.description,
            "tags": dict(view.tags),
            "source": str(view.source.path),
            "last_seen_at": now,
        }
        key = (view_versions_table.c.name == view.name) & (
            view_versions_table.c.version == view.version
        )
        try:
            with self.engine.begin() as conn:
                updated = conn.execute(sa.update(view_versions_table).where(key).values(**seen))
                if updated.rowcount == 0:
                    conn.execute(
                        sa.insert(view_versions_table).values(
                            name=view.name,
                            version=view.version,
                            entity=view.entity,
                            timestamp_column=view.timestamp,
                            created_timestamp_column=view.created_timestamp,
                            features=feature_entries(view),
                            ttl_s=int(view.ttl.total_seconds()),
                            definition=view.definition(),
                            first_registered_at=now,
                            **seen,
                        )
                    )
                    logger.info("registered feature view %s", view.ref)
        except sa.exc.IntegrityError:
            # Another writer inserted the same version between our update and insert.
            with self.engine.begin() as conn:
                conn.execute(sa.update(view_versions_table).where(key).values(**seen))
        with self.engine.connect() as conn:
            record = self._get(conn, view.name, view.version)
        assert record is not None  # written above
        return record

    def views(self) -> list[ViewRecord]:
        """The most recently seen version of every view, by name."""
        query = sa.select(view_versions_table).order_by(
            view_versions_table.c.name,
            view_versions_table.c.last_seen_at.desc(),
            view_versions_table.c.first_registered_at.desc(),
        )
        latest: dict[str, ViewRecord] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                record = self._view_record(row)
                latest.setdefault(record.name, record)
        return list(latest.values())

    def versions(self, name: str) -> list[ViewRecord]:
        """Every registered version of ``name``, newest (first registered last) first.

        Raises :class:`FeatureStoreError` naming the known views when there is none.
        """
        query = (
            sa.select(view_versions_table)
            .where(view_versions_table.c.name == name)
            .order_by(
                view_versions_table.c.first_registered_at.desc(),
                view_versions_table.c.last_seen_at.desc(),
            )
        )
        with self.engine.connect() as conn:
            found = [self._view_record(row) for row in conn.execute(query)]
            if not found:
                names = conn.execute(
                    sa.select(view_versions_table.c.name).distinct().order_by("name")
                ).scalars()
                known = ", ".join(names) or "none"
                raise FeatureStoreError(
                    f"no feature view named {name!r} in the feature registry; known: {known}"
                )
        return found

    # --- materializations -------------------------------------------------------------
    @staticmethod
    def _materialization(row: sa.Row[Any]) -> MaterializationRecord:
        m = row._mapping
        return MaterializationRecord(
            view=m["view"],
            version=m["version"],
            start=as_utc(m["interval_start"]),
            end=as_utc(m["interval_end"]),
            rows=int(m["rows"]),
            partitions=int(m["partitions"]),
            entities_online=int(m["entities_online"]),
            max_event_ts=_utc_or_none(m["max_event_ts"]),
            flow_run_id=m["flow_run_id"],
            finished_at=as_utc(m["finished_at"]),
        )

    def record_materialization(
        self,
        view: FeatureView,
        *,
        start: datetime,
        end: datetime,
        rows: int,
        partitions: int,
        entities_online: int,
        max_event_ts: datetime | None,
        flow_run_id: str | None = None,
    ) -> MaterializationRecord:
        """Record a finished materialization of ``view`` over ``[start, end)`` (registers it)."""
        start, end = as_utc(start), as_utc(end)
        if end < start:
            raise FeatureStoreError(
                f"materialization of {view.ref}: end {end.isoformat()} is before start "
                f"{start.isoformat()}"
            )
        counts = {"rows": rows, "partitions": partitions, "entities_online": entities_online}
        negative = [f"{k}={v}" for k, v in counts.items() if v < 0]
        if negative:
            raise FeatureStoreError(
                f"materialization of {view.ref}: negative count(s) {', '.join(negative)}"
            )
        self.register(view)
        record = MaterializationRecord(
            view=view.name,
            version=view.version,
            start=start,
            end=end,
            rows=rows,
            partitions=partitions,
            entities_online=entities_online,
            max_event_ts=_utc_or_none(max_event_ts),
            flow_run_id=flow_run_id,
            finished_at=datetime.now(UTC),
        )
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(materializations_table).values(
                    view=record.view,
                    version=record.version,
                    interval_start=record.start,
                    interval_end=record.end,
                    rows=record.rows,
                    partitions=record.partitions,
                    entities_online=record.entities_online,
                    max_event_ts=record.max_event_ts,
                    flow_run_id=record.flow_run_id,
                    finished_at=record.finished_at,
                )
            )
        logger.info(
            "recorded materialization of %s: %s → %s, %d rows",
            view.ref,
            start.isoformat(),
            end.isoformat(),
            rows,
        )
        return record

    def materializations(
        self, name: str, version: str | None = None, limit: int = 20
    ) -> list[MaterializationRecord]:
        """The newest ``limit`` materializations of ``name`` (of one version when given)."""
        query = sa.select(materializations_table).where(materializations_table.c.view == name)
        if version is not None:
            query = query.where(materializations_table.c.version == version)
        query = query.order_by(
            materializations_table.c.finished_at.desc(), materializations_table.c.id.desc()
        ).limit(limit)
        with self.engine.connect() as conn:
            return [self._materialization(row) for row in conn.execute(query)]

    def last_materialization(self, name: str, version: str) -> MaterializationRecord | None:
        """The most recently finished materialization of that version, or None."""
        found = self.materializations(name, version, limit=1)
        return found[0] if found else None

    def materialized_until(self, name: str, version: str) -> datetime | None:
        """The latest interval end over every materialization of that version, or None."""
        query = sa.select(sa.func.max(materializations_table.c.interval_end)).where(
            materializations_table.c.view == name, materializations_table.c.version == version
        )
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return _utc_or_none(value)


def open_registry(url: str) -> FeatureRegistry:
    """A registry on a new engine for ``url``, its tables created (SQLite folder too)."""
    engine = create_engine(url)
    registry = FeatureRegistry(engine)
    registry.create_tables()
    return registry
