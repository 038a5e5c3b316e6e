"""The dataset catalog: one SQL database (SQLite by default, Postgres in production).

Two tables: ``datasets`` (a name, its id and the last version number ever given, so
numbers are never reused after expiry) and ``dataset_versions`` (one row per stored
file). Times are stored and returned as UTC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mlops.datasets.validate import Format, Kind
from mlops.errors import DatasetNotFoundError, MlopsError
from mlops.sqldb import as_utc, create_engine

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

datasets_table = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

versions_table = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("dataset_id", sa.ForeignKey("datasets.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("source_name", sa.String(255), nullable=False),
    sa.Column("entity", sa.String(255), nullable=False),
    sa.Column("timestamp_column", sa.String(255), nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("time_min", sa.DateTime(timezone=True), nullable=False),
    sa.Column("time_max", sa.DateTime(timezone=True), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


@dataclass(frozen=True)
class DatasetVersion:
    """One stored version of a dataset; ``source_name`` is for display, never a path."""

    name: str
    dataset_id: str
    version: int
    sha256: str
    format: Format
    source_name: str
    entity: str
    timestamp: str
    schema: dict[str, Kind]
    rows: int
    time_min: datetime
    time_max: datetime
    size_bytes: int
    created_at: datetime

    @property
    def relative_path(self) -> str:
        """Where the file lies under the datasets folder: ``<dataset_id>/v<version>.parquet``."""
        return f"{self.dataset_id}/v{self.version}.parquet"


Versions = list[DatasetVersion]  # an alias: ``DatasetCatalog.list`` hides the builtin


class DatasetCatalog:
    """Dataset metadata on a SQLAlchemy engine (built by the caller, passed in)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create_tables(self) -> None:
        """Create the tables if they are missing (migrations come later)."""
        metadata.create_all(self.engine)

    # --- reads ----------------------------------------------------------------------
    def _select(self) -> sa.Select[Any]:
        return sa.select(versions_table, datasets_table.c.name).join(
            datasets_table, datasets_table.c.id == versions_table.c.dataset_id
        )

    @staticmethod
    def _record(row: sa.Row[Any]) -> DatasetVersion:
        m = row._mapping
        return DatasetVersion(
            name=m["name"],
            dataset_id=m["dataset_id"],
            version=m["version"],
            sha256=m["sha256"],
            format=m["format"],
            source_name=m["source_name"],
            entity=m["entity"],
            timestamp=m["timestamp_column"],
            schema={name: kind for name, kind in m["columns"]},
            rows=m["rows"],
            time_min=as_utc(m["time_min"]),
            time_max=as_utc(m["time_max"]),
            size_bytes=m["size_bytes"],
            created_at=as_utc(m["created_at"]),
        )

    def _fetch(self, query: sa.Select[Any]) -> Versions:
        with self.engine.connect() as conn:
            return [self._record(row) for row in conn.execute(query)]

    def dataset_ref(self, name: str) -> tuple[str, int] | None:
        """``(dataset_id, last_version)`` of a name, or None when it was never added."""
        query = sa.select(datasets_table.c.id, datasets_table.c.last_version).where(
            datasets_table.c.name == name
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else (row.id, row.last_version)

    def list(self, name: str | None = None) -> Versions:
        """Every live version, by name then version (of one name when given)."""
        query = self._select().order_by(datasets_table.c.name, versions_table.c.version)
        if name is not None:
            query = query.where(datasets_table.c.name == name)
        return self._fetch(query)

    def versions(self, name: str) -> Versions:
        """The live versions of ``name``, oldest first; :class:`DatasetNotFoundError` if none."""
        found = self.list(name)
        if not found:
            raise DatasetNotFoundError(f"no dataset named {name!r} in the catalog")
        return found

    def get(self, name: str, version: int | None = None) -> DatasetVersion:
        """One version of ``name`` (the latest live one when ``version`` is None)."""
        found = self.versions(name)
        if version is None:
            return found[-1]
        for record in found:
            if record.version == version:
                return record
        shown = ", ".join(str(r.version) for r in found)
        raise DatasetNotFoundError(
            f"dataset {name!r} has no version {version} (live versions: {shown})"
        )

    def find(self, name: str, *, sha256: str, entity: str, timestamp: str) -> DatasetVersion | None:
        """A live version of ``name`` with the same content hash and declared columns."""
        query = self._select().where(
            datasets_table.c.name == name,
            versions_table.c.sha256 == sha256,
            versions_table.c.entity == entity,
            versions_table.c.timestamp_column == timestamp,
        )
        found = self._fetch(query.order_by(versions_table.c.version))
        return found[0] if found else None

    def created_before(self, cutoff: datetime) -> Versions:
        """Live versions created at or before ``cutoff``."""
        query = self._select().where(versions_table.c.created_at <= cutoff.astimezone(UTC))
        return self._fetch(query.order_by(datasets_table.c.name, versions_table.c.version))

    # --- writes ---------------------------------------------------------------------
    def add(self, record: DatasetVersion) -> DatasetVersion:
        """Insert a version whose file is in place, in one transaction.

        ``record.version`` must be the dataset's last version + 1 (1 for a new name);
        otherwise another writer got there first and :class:`MlopsError` says so.
        """
        values = {
            "dataset_id": record.dataset_id,
            "version": record.version,
            "sha256": record.sha256,
            "format": record.format,
            "source_name": record.source_name,
            "entity": record.entity,
            "timestamp_column": record.timestamp,
            "columns": [[name, kind] for name, kind in record.schema.items()],
            "rows": record.rows,
            "time_min": record.time_min.astimezone(UTC),
            "time_max": record.time_max.astimezone(UTC),
            "size_bytes": record.size_bytes,
            "created_at": record.created_at.astimezone(UTC),
        }
        conflict = MlopsError(
            f"dataset {record.name!r} version {record.version} was added by another writer "
            "at the same time: add it again"
        )
        try:
            with self.engine.begin() as conn:
                if record.version == 1:
                    conn.execute(
                        sa.insert(datasets_table).values(
                            id=record.dataset_id,
                            name=record.name,
                            last_version=1,
                            created_at=values["created_at"],
                        )
                    )
                else:
                    bumped = conn.execute(
                        sa.update(datasets_table)
                        .where(
                            datasets_table.c.id == record.dataset_id,
                            datasets_table.c.last_version == record.version - 1,
                        )
                        .values(last_version=record.version)
                    )
                    if bumped.rowcount != 1:
                        raise conflict
                conn.execute(sa.insert(versions_table).values(**values))
        except sa.exc.IntegrityError as exc:
            raise conflict from exc
        logger.info("catalogued dataset %s version %d", record.name, record.version)
        return record

    def delete(self, name: str, version: int) -> bool:
        """Remove one version's row; False when it was not there."""
        ref = self.dataset_ref(name)
        if ref is None:
            return False
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.delete(versions_table).where(
                    versions_table.c.dataset_id == ref[0], versions_table.c.version == version
                )
            )
        return bool(result.rowcount)


def open_catalog(url: str) -> DatasetCatalog:
    """A catalog on a new engine for ``url``, its tables created (SQLite folder too)."""
    engine = create_engine(url)
    catalog = DatasetCatalog(engine)
    catalog.create_tables()
    return catalog
