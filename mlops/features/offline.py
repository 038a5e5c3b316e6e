"""The offline store: a view's feature rows as Parquet, partitioned by view, version, date.

Layout under the store's root::

    <view>/<version>/date=YYYY-MM-DD/part.parquet

A partition is written whole to a temporary file in its folder and renamed into place,
so a reader sees the old file or the new one, never half of one, and materializing a
day again replaces that day instead of adding to it.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops.errors import FeatureStoreError
from mlops.features.definition import FeatureView
from mlops.features.source import to_utc

logger = logging.getLogger(__name__)

PART_FILE = "part.parquet"


class OfflineStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def view_dir(self, view: FeatureView) -> Path:
        return self.root / view.name / view.version

    def partition_path(self, view: FeatureView, day: date) -> Path:
        return self.view_dir(view) / f"date={day.isoformat()}" / PART_FILE

    def write(self, view: FeatureView, rows: pd.DataFrame, days: list[date]) -> list[Path]:
        """Replace the partitions of ``days`` with ``rows`` (a day with no rows is emptied).

        Every day in ``days`` gets a partition, empty ones included, so a rerun over the
        same range always leaves exactly what the source holds.
        """
        stamps = rows[view.timestamp]
        by_day = stamps.dt.date if len(rows) else pd.Series([], dtype=object)
        written = []
        schema = pa.Schema.from_pandas(rows, preserve_index=False)
        # An empty frame's text columns (the entity key) infer as `null`; store them as
        # text so every partition of a view has one schema and reads back together.
        schema = pa.schema(
            [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema],
            metadata=schema.metadata,
        )
        for day in days:
            part = rows[by_day == day]
            table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
            written.append(self.write_partition(view, day, table))
        logger.info("wrote %d partitions of %s (%d rows)", len(written), view.ref, len(rows))
        return written

    def write_partition(self, view: FeatureView, day: date, table: pa.Table) -> Path:
        """Replace the partition of ``day`` with ``table`` (atomic)."""
        return self._write_atomic(self.partition_path(view, day), table, view.entity)

    @staticmethod
    def _write_atomic(path: Path, table: pa.Table, entity: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temporary files a killed writer left behind: this write supersedes them.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            # Dictionary-encode only the entity key: floats rarely repeat, and skipping
            # their dictionaries halves the write time for the same file size.
            pq.write_table(table, tmp, use_dictionary=[entity])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def days(self, view: FeatureView) -> list[date]:
        """The materialized days of ``view``'s current version, oldest first."""
        base = self.view_dir(view)
        if not base.exists():
            return []
        found = [
            date.fromisoformat(p.name.removeprefix("date="))
            for p in base.glob("date=*")
            if (p / PART_FILE).exists()
        ]
        return sorted(found)

    def unreadable_days(self, view: FeatureView) -> list[date]:
        """Days whose partition cannot be read back (truncated, corrupt): rewrite them."""
        bad = []
        for day in self.days(view):
            path = self.partition_path(view, day)
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowInvalid) as exc:
                logger.warning("unreadable offline partition %s: %s", path, exc)
                bad.append(day)
        return bad

    def files(
        self, view: FeatureView, *, start: datetime | None = None, end: datetime | None = None
    ) -> list[Path]:
        """Partition files of the days overlapping ``[start, end)`` (all when open)."""
        lo = None if start is None else to_utc(start)
        hi = None if end is None else to_utc(end)
        return [
            self.partition_path(view, d)
            for d in self.days(view)
            if (lo is None or d >= lo.date()) and (hi is None or _day_start(d) < hi)
        ]

    @staticmethod
    def read_partition(path: Path) -> pa.Table:
        """One partition file; a clear error naming it when it cannot be read."""
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise FeatureStoreError(
                f"corrupt offline partition {path}: {exc}; materialize that day again"
            ) from exc

    def read(
        self,
        view: FeatureView,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pd.DataFrame:
        """Feature rows with ``start <= timestamp < end`` (the whole view when open)."""
        lo = None if start is None else to_utc(start)
        hi = None if end is None else to_utc(end)
        files = self.files(view, start=lo, end=hi)
        if not files:
            raise FeatureStoreError(
                f"offline store has no rows of {view.ref} in "
                f"[{lo or 'start'}, {hi or 'end'}): materialize the view first "
                f"(`mlops materialize {view.name}`)"
            )
        tables = [self.read_partition(f) for f in files]
        # "default" promotion also reads partitions written before empty ones were typed.
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        ts = frame[view.timestamp]
        mask = pd.Series(True, index=frame.index)
        if lo is not None:
            mask &= ts >= lo
        if hi is not None:
            mask &= ts < hi
        return frame[mask].reset_index(drop=True)


def _day_start(day: date) -> pd.Timestamp:
    return pd.Timestamp(day.isoformat(), tz="UTC")
