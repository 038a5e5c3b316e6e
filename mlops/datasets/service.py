"""Adding, listing and expiring datasets: files under the datasets folder + catalog rows.

A version is stored as ``<datasets>/<dataset_id>/v<version>.parquet``: the user's file
name is never part of a path. The content hash is the sha256 of the *source file's
bytes*: adding the same bytes under the same name with the same entity and timestamp
columns returns the existing version without reading the file again.

Nothing half-written stays behind: the Parquet file is written to a hidden temporary
file in the target folder, hard-linked to its final name (which fails rather than
overwrite) and only then is the catalog row inserted; on any failure the files this
call made are removed. A process killed between the link and the insert leaves a file
no row refers to: :func:`remove_orphans` deletes such files once they are older than a
grace period (a live writer inserts its row within seconds), and adding that version
again replaces an orphan instead of failing.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from mlops.datasets.catalog import DatasetCatalog, DatasetVersion
from mlops.datasets.validate import (
    CHUNK_ROWS,
    Limits,
    arrow_schema,
    check_name,
    check_size,
    normalized_tables,
    profile,
    reject,
    sha256_file,
    source_format,
)
from mlops.errors import MlopsError
from mlops.settings import Settings

logger = logging.getLogger(__name__)

#: A file with no catalog row is an orphan once it is this old (its writer has died).
ORPHAN_GRACE = timedelta(minutes=10)


def datasets_dir(settings: Settings) -> Path:
    """The folder that holds every dataset file."""
    assert settings.datasets.path is not None  # resolved by Settings
    return settings.datasets.path


def dataset_file(settings: Settings, record: DatasetVersion) -> Path:
    """The stored Parquet file of one version."""
    return datasets_dir(settings) / record.relative_path


def limits_of(settings: Settings, *, chunk_rows: int = CHUNK_ROWS) -> Limits:
    """The validation limits of the settings."""
    cfg = settings.datasets
    return Limits(
        max_bytes=cfg.max_bytes,
        max_empty_fraction=cfg.max_empty_fraction,
        min_rows=cfg.min_rows,
        chunk_rows=chunk_rows,
    )


def add_dataset(
    *,
    settings: Settings,
    catalog: DatasetCatalog,
    path: Path,
    name: str,
    entity: str,
    timestamp: str,
    now: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> DatasetVersion:
    """Validate ``path`` and store it as the next version of ``name`` (or return the
    version that already holds the same bytes)."""
    check_name(name)
    path = Path(path)
    fmt = source_format(path)
    limits = limits_of(settings, chunk_rows=chunk_rows)
    check_size(path, limits.max_bytes)
    digest = sha256_file(path, limits.max_bytes)
    same = catalog.find(name, sha256=digest, entity=entity, timestamp=timestamp)
    if same is not None and dataset_file(settings, same).is_file():
        logger.info("%s is already dataset %s version %d", path, name, same.version)
        return same

    found = profile(path, fmt=fmt, entity=entity, timestamp=timestamp, limits=limits)
    ref = catalog.dataset_ref(name)
    dataset_id, last = ref if ref is not None else (uuid.uuid4().hex, 0)
    record = DatasetVersion(
        name=name,
        dataset_id=dataset_id,
        version=last + 1,
        sha256=digest,
        format=fmt,
        source_name=path.name[:255],
        entity=entity,
        timestamp=timestamp,
        schema=found.schema,
        rows=found.rows,
        time_min=found.time_min,
        time_max=found.time_max,
        size_bytes=0,
        created_at=(now or datetime.now(UTC)).astimezone(UTC),
    )
    target = dataset_file(settings, record)
    size = _write(path, target, record=record, chunk_rows=chunk_rows)
    record = DatasetVersion(**{**record.__dict__, "size_bytes": size})
    try:
        catalog.add(record)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    logger.info("added %s as dataset %s version %d", path, name, record.version)
    return record


def _write(source: Path, target: Path, *, record: DatasetVersion, chunk_rows: int) -> int:
    """Write the normalized Parquet to ``target`` through a temporary file; its size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with pq.ParquetWriter(temp, arrow_schema(record.schema)) as writer:
            for table in normalized_tables(
                source, fmt=record.format, schema=record.schema, chunk_rows=chunk_rows
            ):
                writer.write_table(table)
        if target.exists() and _is_orphan(target, datetime.now(UTC)):
            logger.warning("replacing %s, left by a writer that died before its insert", target)
            target.unlink(missing_ok=True)
        try:
            os.link(temp, target)  # unlike rename, never replaces another writer's file
        except FileExistsError as exc:
            raise MlopsError(
                f"{target} already exists: dataset {record.name!r} version {record.version} "
                "is being written by another writer right now: add it again in a minute"
            ) from exc
        return target.stat().st_size
    except (OSError, ValueError) as exc:
        raise reject(source, "write", f"cannot write {target}: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)


def _is_orphan(path: Path, now: datetime) -> bool:
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return now - modified > ORPHAN_GRACE


def remove_orphans(*, settings: Settings, catalog: DatasetCatalog, now: datetime) -> list[Path]:
    """Delete stored files (and stale temporary files) no catalog row refers to, once
    older than :data:`ORPHAN_GRACE`; returns the paths removed."""
    root = datasets_dir(settings)
    if not root.exists():
        return []
    known = {dataset_file(settings, record) for record in catalog.list()}
    removed = []
    for path in sorted(root.glob("*/*")):
        if path.is_file() and path not in known and _is_orphan(path, now):
            path.unlink(missing_ok=True)
            removed.append(path)
            logger.info("removed orphan dataset file %s", path)
    return removed


def list_datasets(*, catalog: DatasetCatalog, name: str | None = None) -> list[DatasetVersion]:
    """Every live version (of ``name`` when given), by name then version."""
    return catalog.list(name)


def cleanup_expired(
    *, settings: Settings, catalog: DatasetCatalog, now: datetime
) -> list[DatasetVersion]:
    """Delete the file, then the row, of every version older than the TTL; the removed.

    A TTL of 0 days keeps everything. A file already gone is not an error, so running
    it twice (or after a crash between the two steps) is safe.
    """
    days = settings.datasets.ttl_days
    if days <= 0:
        return []
    expired = catalog.created_before(now.astimezone(UTC) - timedelta(days=days))
    for record in expired:
        dataset_file(settings, record).unlink(missing_ok=True)
        catalog.delete(record.name, record.version)
        logger.info("expired dataset %s version %d", record.name, record.version)
    return expired
