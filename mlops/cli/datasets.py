"""``mlops datasets``: register, list, show and expire user datasets.

The catalog's engine is built from settings inside each command and disposed after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlops.cli.common import console, fail, load_settings
from mlops.datasets.catalog import DatasetCatalog, DatasetVersion, open_catalog
from mlops.datasets.service import (
    add_dataset,
    cleanup_expired,
    dataset_file,
    list_datasets,
    remove_orphans,
)
from mlops.errors import MlopsError
from mlops.settings import Settings

datasets_app = typer.Typer(
    help=(
        "Register your own CSV or Parquet datasets: validated, versioned, expired by TTL.\n\n"
        "Example: `mlops datasets add trips.csv --name trips --entity user_id --timestamp ts`"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


@contextmanager
def _catalog() -> Iterator[tuple[Settings, DatasetCatalog]]:
    """Settings and a catalog on a fresh engine; errors end the command with exit code 1."""
    settings = load_settings()
    assert settings.datasets.catalog_url is not None
    try:
        catalog = open_catalog(settings.datasets.catalog_url)
    except Exception as exc:  # a catalog that cannot be reached: one line, not a traceback
        raise fail(MlopsError(f"cannot open the dataset catalog: {exc}")) from exc
    try:
        yield settings, catalog
    except MlopsError as exc:
        raise fail(exc) from exc
    finally:
        catalog.engine.dispose()


def _time_range(record: DatasetVersion) -> str:
    return f"{record.time_min:%Y-%m-%d %H:%M:%S} → {record.time_max:%Y-%m-%d %H:%M:%S}"


def _schema(record: DatasetVersion) -> str:
    return ", ".join(f"{name}:{kind}" for name, kind in record.schema.items())


@datasets_app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="CSV (with a header row) or Parquet file.")],
    name: Annotated[str, typer.Option(help="Dataset name: a-z, 0-9, '_' and '-'.")],
    entity: Annotated[str, typer.Option(help="Column that holds the entity key.")],
    timestamp: Annotated[str, typer.Option(help="Column of ISO 8601 event times.")],
) -> None:
    """Validate a file and store it as the next version of a dataset.

    The same bytes added again under the same name return the existing version.

    Example: `mlops datasets add trips.csv --name trips --entity user_id --timestamp ts`
    """
    with _catalog() as (settings, catalog):
        record = add_dataset(
            settings=settings,
            catalog=catalog,
            path=file,
            name=name,
            entity=entity,
            timestamp=timestamp,
        )
    console.print(
        f"dataset {record.name} version {record.version}: {record.rows:,} rows, "
        f"{len(record.schema)} columns, {_time_range(record)}, sha256 {record.sha256[:12]}",
        soft_wrap=True,
        highlight=False,
    )


@datasets_app.command("ls")
def ls(
    name: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
) -> None:
    """List the live dataset versions with schema, rows, time range and size.

    Example: `mlops datasets ls` or `mlops datasets ls trips`
    """
    with _catalog() as (_, catalog):
        records = list_datasets(catalog=catalog, name=name)
    if not records:
        console.print("no datasets")
        return
    table = Table(title="datasets", title_justify="left")
    for column in ("name", "version", "rows", "time range (UTC)", "bytes", "created", "schema"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r.name,
            str(r.version),
            f"{r.rows:,}",
            _time_range(r),
            f"{r.size_bytes:,}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
            _schema(r),
        )
    console.print(table)


@datasets_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    version: Annotated[int | None, typer.Option(help="Version (default: the latest).")] = None,
) -> None:
    """Show one version of a dataset: its columns and kinds, rows, time range and file.

    Example: `mlops datasets show trips --version 2`
    """
    with _catalog() as (settings, catalog):
        record = catalog.get(name, version)
        versions = [r.version for r in catalog.versions(name)]
    rows = {
        "dataset": f"{record.name} version {record.version} (live: {versions})",
        "entity": record.entity,
        "timestamp": record.timestamp,
        "rows": f"{record.rows:,}",
        "time range (UTC)": _time_range(record),
        "bytes": f"{record.size_bytes:,}",
        "created (UTC)": f"{record.created_at:%Y-%m-%d %H:%M:%S}",
        "source": f"{record.source_name} ({record.format})",
        "sha256": record.sha256,
        "file": str(dataset_file(settings, record)),
    }
    for key, value in rows.items():
        console.print(f"{key}: {value}", soft_wrap=True, highlight=False, markup=False)
    console.print("schema:", highlight=False)
    for column, kind in record.schema.items():
        console.print(f"  {column}: {kind}", soft_wrap=True, highlight=False, markup=False)


@datasets_app.command("cleanup")
def cleanup() -> None:
    """Delete the versions older than the TTL (`MLOPS_DATASETS__TTL_DAYS`; 0 = never), and
    files a crashed `add` left without a catalog row.

    Safe to run twice.

    Example: `MLOPS_DATASETS__TTL_DAYS=30 mlops datasets cleanup`
    """
    with _catalog() as (settings, catalog):
        now = datetime.now(UTC)
        removed = cleanup_expired(settings=settings, catalog=catalog, now=now)
        orphans = remove_orphans(settings=settings, catalog=catalog, now=now)
    if orphans:
        console.print(f"removed {len(orphans)} orphan file(s) left by interrupted adds")
    if settings.datasets.ttl_days == 0:
        console.print("TTL is 0 (never expire): nothing removed")
        return
    console.print(f"removed {len(removed)} expired version(s)")
    for r in removed:
        console.print(f"  {r.name} version {r.version}", highlight=False, markup=False)
