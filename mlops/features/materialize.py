"""Materializing a feature view in bounded memory: source → offline store + online store.

The window (whole UTC days) is cut into chunks of whole days holding at most
``chunk_events`` events, look-back included (or of ``chunk_days`` days when asked). Each
chunk reads from the source file(s) only its events plus the aggregation look-back,
never the whole table, and its rows are written as the chunk's day partitions (each
atomically). Peak memory is set by the chunk, not by the source: a bigger source only
means more chunks.

Chunks run newest first, so each entity's newest row goes to the online store once,
from the first chunk that has the entity, while that chunk's partitions are written.
Online writes are event-time monotonic, so materializing an old window never replaces
a newer row.

A rerun over the same window rewrites the same partitions with the same bytes (rows are
written in a total order) and the online store with the same values. A crash midway
leaves every partition either old or new, never half-written; running again repairs
it, and :meth:`~mlops.features.offline.OfflineStore.unreadable_days` finds partitions
damaged by something else so an incremental run rewrites them too.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from mlops.errors import DataError, SchemaError
from mlops.features.compute import _quote
from mlops.features.definition import FeatureView, Source
from mlops.features.offline import OfflineStore
from mlops.features.online import OnlineStore
from mlops.features.rolling import compute_rolling
from mlops.features.source import to_utc
from mlops.features.window import Window, align

if TYPE_CHECKING:
    from mlops.features.registry import FeatureRegistry

logger = logging.getLogger(__name__)

#: Events computed per chunk, look-back included: what bounds a materialization's memory.
DEFAULT_CHUNK_EVENTS = 2_000_000

_DAY_US = 86_400_000_000
_UTC_US = pa.timestamp("us", "UTC")

#: Threads writing a chunk's day partitions.
WRITER_THREADS = 2

#: DuckDB's own memory cap for one chunk query (it spills to disk beyond it).
DUCKDB_MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class Chunk:
    """Days ``[start, end)`` of one query; events from ``start - lookback`` are read."""

    start: datetime
    end: datetime

    @property
    def days(self) -> list[date]:
        return Window(self.start, self.end).days


@dataclass(frozen=True)
class Plan:
    view: FeatureView
    window: Window
    chunks: list[Chunk]

    @property
    def days(self) -> list[date]:
        return self.window.days


@dataclass
class ChunkResult:
    chunk: Chunk
    rows: int
    partitions: int
    max_event_ts: datetime | None
    entities_online: int  # rows this chunk wrote to the online store
    sent_online: pa.Array  # entity keys whose newest row this chunk wrote online


@dataclass
class MaterializeResult:
    view: str
    version: str
    start: datetime
    end: datetime
    rows: int
    partitions: int
    entities_online: int
    max_event_ts: datetime | None
    chunks: int

    def summary(self) -> dict[str, object]:
        return {
            "view": self.view,
            "version": self.version,
            "window": f"{self.start.isoformat()}/{self.end.isoformat()}",
            "rows": self.rows,
            "partitions": self.partitions,
            "chunks": self.chunks,
            "entities_online": self.entities_online,
            "max_event_ts": None if self.max_event_ts is None else self.max_event_ts.isoformat(),
        }


# --- the source, read by DuckDB -------------------------------------------------------
def _scan_sql(source: Source) -> str:
    """A DuckDB table function reading ``source`` (a file or a folder of Parquet)."""
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"source {path} does not exist")
    if source.format == "csv":
        return f"read_csv({_literal(str(path))}, header = true)"
    target = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    return f"read_parquet({_literal(target)})"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order=false")
    return con


def _events_sql(view: FeatureView, con: duckdb.DuckDBPyConnection) -> str:
    """SELECT of the view's source columns with its time column(s) as TIMESTAMPTZ.

    Checks the columns exist and that the time columns are timestamps (or text DuckDB
    can cast), naming the source and the column otherwise.
    """
    scan = _scan_sql(view.source)
    path = view.source.path
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
    except duckdb.Error as exc:
        raise DataError(f"cannot read {view.source.format} source {path}: {exc}") from exc
    types = {row[0]: str(row[1]).upper() for row in described}
    missing = [c for c in view.source_columns if c not in types]
    if missing:
        raise SchemaError(
            f"{path}: missing column(s) {', '.join(missing)} (it has {', '.join(types) or 'none'})"
        )
    selects = []
    for col in view.source_columns:
        q = _quote(col)
        if col in (view.timestamp, view.created_timestamp):
            kind = types[col]
            if kind.startswith("TIMESTAMP WITH TIME ZONE"):
                selects.append(q)
            elif kind.startswith(("TIMESTAMP", "DATE", "VARCHAR")):
                selects.append(f"CAST({q} AS TIMESTAMPTZ) AS {q}")
            else:
                raise SchemaError(f"{path}: column {col!r} is not a timestamp (type {kind})")
        else:
            selects.append(q)
    return f"SELECT {', '.join(selects)} FROM {scan}"


def _fetch(
    con: duckdb.DuckDBPyConnection, sql: str, view: FeatureView, params: list[object] | None = None
) -> list[tuple[object, ...]]:
    try:
        return con.execute(sql, params or []).fetchall()
    except duckdb.ConversionException as exc:
        raise SchemaError(f"{view.source.path}: a time column does not parse: {exc}") from exc
    except duckdb.Error as exc:
        raise DataError(f"cannot read source {view.source.path}: {exc}") from exc


# --- planning ----------------------------------------------------------------------------
def plan(
    view: FeatureView,
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    chunk_days: int | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    allow_empty: bool = False,
) -> Plan:
    """Whole UTC days to (re)write, cut into chunks: the given bounds, else the source's.

    Chunks are ``chunk_days`` long when that is given; otherwise as many days as keep a
    chunk's events, its look-back included, within ``chunk_events`` (at least one day).
    With ``allow_empty`` a source with nothing from ``start`` on gives a plan without
    chunks (an incremental run that is up to date) instead of an error.
    """
    if chunk_days is not None and chunk_days < 1:
        raise DataError(f"chunk_days must be at least 1, got {chunk_days}")
    if chunk_events < 1:
        raise DataError(f"chunk_events must be at least 1, got {chunk_events}")
    lo, hi = align(start, end)
    per_day = events_per_day(view)
    if lo is None or hi is None:
        if not per_day:
            raise DataError(f"source {view.source.path} has no events")
        first, last = min(per_day), max(per_day)
        lo = lo or to_utc(first.isoformat()).to_pydatetime()
        hi = hi or to_utc((last + timedelta(days=1)).isoformat()).to_pydatetime()
        if hi <= lo:
            if allow_empty:
                return Plan(view=view, window=Window(start=lo, end=lo), chunks=[])
            raise DataError(
                f"nothing to materialize: the source's last event day ({last.isoformat()}) "
                f"is before {lo.isoformat()}"
            )
    window = Window(start=lo, end=hi)
    if chunk_days is not None:
        cuts = window.days[::chunk_days]
    else:
        cuts = _cut_by_events(window.days, per_day, view.max_window, chunk_events)
    bounds = [to_utc(d.isoformat()).to_pydatetime() for d in cuts] + [hi]
    chunks = [Chunk(start=a, end=b) for a, b in itertools.pairwise(bounds)]
    return Plan(view=view, window=window, chunks=chunks)


def _cut_by_events(
    days: list[date], per_day: dict[date, int], lookback: timedelta, budget: int
) -> list[date]:
    """First day of each chunk: greedy, so a chunk's events + look-back stay in budget."""
    back = math.ceil(lookback / timedelta(days=1))
    cuts: list[date] = []
    in_chunk = 0
    for day in days:
        today = per_day.get(day, 0)
        if not cuts or in_chunk + today > budget:
            cuts.append(day)
            in_chunk = sum(per_day.get(day - timedelta(days=i), 0) for i in range(1, back + 1))
        in_chunk += today
    return cuts


def events_per_day(view: FeatureView) -> dict[date, int]:
    """How many events the view's source holds on each UTC day (one scan)."""
    epoch = date(1970, 1, 1)
    dataset = _arrow_source(view)
    if dataset is not None:
        column = _read_arrow(view, dataset, [view.timestamp])[view.timestamp]
        stamps = _utc_micros(column.drop_null())
        days, counts = np.unique(stamps // _DAY_US, return_counts=True)
        return {
            epoch + timedelta(days=d): n
            for d, n in zip(days.tolist(), counts.tolist(), strict=True)
        }
    return _events_per_day_duckdb(view)


def _events_per_day_duckdb(view: FeatureView) -> dict[date, int]:
    con = _connect()
    try:
        events = _events_sql(view, con)
        ts = _quote(view.timestamp)
        rows = _fetch(
            con,
            # Whole days since 1970 (floored, as numpy does): no time-zone work per row.
            f"SELECT floor(epoch_us({ts}) / {_DAY_US})::BIGINT AS d, count(*) FROM ({events}) "
            f"WHERE {ts} IS NOT NULL GROUP BY d",
            view,
        )
    finally:
        con.close()
    epoch = date(1970, 1, 1)
    return {epoch + timedelta(days=int(str(d))): int(str(n)) for d, n in rows}


def incremental_start(
    view: FeatureView, *, registry: FeatureRegistry, offline: OfflineStore
) -> datetime | None:
    """Where an incremental run starts; ``None`` when nothing was recorded (do it all).

    The last materialized day is done again (it may have been partial), and so is any
    day since the first recorded start whose partition is missing or unreadable.
    """
    until = registry.materialized_until(view.name, view.version)
    if until is None:
        return None
    start = to_utc(until) - timedelta(days=1)
    records = registry.materializations(view.name, view.version, limit=10_000)
    first = min((to_utc(r.start) for r in records), default=start)
    present = set(offline.days(view))
    expected = Window(start=first.to_pydatetime(), end=start.to_pydatetime()).days
    damaged = [d for d in expected if d not in present] + offline.unreadable_days(view)
    if damaged:
        earliest = to_utc(min(damaged).isoformat())
        logger.warning(
            "%s: partition of %s is missing or unreadable: starting there",
            view.ref,
            min(damaged),
        )
        start = min(start, earliest)
    return start.to_pydatetime()


# --- one chunk ---------------------------------------------------------------------------
def read_chunk_events(view: FeatureView, chunk: Chunk) -> pa.Table:
    """The source events a chunk needs: its days and the aggregation look-back.

    Time columns come as ``timestamp[us, UTC]``. A single Parquet file whose time
    columns are µs or ns timestamps is read by Arrow directly (a third of DuckDB's time:
    no conversion of its result); anything else (CSV, a folder, text or coarser times)
    by DuckDB. Both give the same table (a test holds them to it).
    """
    read_from = to_utc(chunk.start) - view.max_window
    dataset = _arrow_source(view)
    if dataset is not None:
        return _read_chunk_arrow(view, dataset, read_from, to_utc(chunk.end))
    return _read_chunk_duckdb(view, read_from, to_utc(chunk.end))


def _read_chunk_duckdb(view: FeatureView, lo: pd.Timestamp, hi: pd.Timestamp) -> pa.Table:
    con = _connect()
    try:
        events = _events_sql(view, con)
        ts = _quote(view.timestamp)
        sql = (
            f"SELECT * FROM ({events}) WHERE {ts} >= {_ts_literal(lo)} AND {ts} < {_ts_literal(hi)}"
        )
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.ConversionException as exc:
            raise SchemaError(f"{view.source.path}: a time column does not parse: {exc}") from exc
        except duckdb.Error as exc:
            raise DataError(f"cannot read source {view.source.path}: {exc}") from exc
    finally:
        con.close()


def _arrow_source(view: FeatureView) -> ds.Dataset | None:
    """The source as an Arrow dataset when Arrow reads it as DuckDB would: one Parquet
    file holding the view's columns, its time columns µs or ns timestamps. Else None."""
    path = Path(view.source.path)
    if view.source.format != "parquet" or not path.is_file():
        return None
    try:
        dataset = ds.dataset(str(path), format="parquet")
    except (OSError, pa.ArrowException):
        return None  # DuckDB's path names the problem
    schema = dataset.schema
    if any(c not in schema.names for c in view.source_columns):
        return None
    for col in (view.timestamp, view.created_timestamp):
        kind = schema.field(col).type if col else None
        if kind is not None and not (pa.types.is_timestamp(kind) and kind.unit in ("us", "ns")):
            return None
    return dataset


def _read_arrow(
    view: FeatureView, dataset: ds.Dataset, columns: list[str], where: ds.Expression | None = None
) -> pa.Table:
    """``columns`` of the rows matching ``where``, time columns as ``timestamp[us, UTC]``
    and other columns as DuckDB gives them."""
    try:
        table = dataset.to_table(columns=columns, filter=where)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read source {view.source.path}: {exc}") from exc
    for i, field in enumerate(table.schema):
        kind = field.type
        if field.name in (view.timestamp, view.created_timestamp):
            kind = _UTC_US
        elif pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_large_string(kind):
            kind = pa.string()
        if kind == _UTC_US and field.type.unit == "ns":
            table = table.set_column(i, field.name, _round_to_micros(table.column(i)))
        elif kind != field.type:
            table = table.set_column(i, field.name, table.column(i).cast(kind))
    return table


def _round_to_micros(column: pa.ChunkedArray) -> pa.Array:
    """ns times as ``timestamp[us, UTC]``, rounded as DuckDB's cast does (halves away
    from zero)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    raw = pc.fill_null(column.cast(pa.int64()), 0).to_numpy()
    rounded = (np.abs(raw) + 500) // 1_000
    micros = np.where(raw < 0, -rounded, rounded)
    mask = None if column.null_count == 0 else column.is_null().to_numpy(zero_copy_only=False)
    return pa.array(micros, type=_UTC_US, mask=mask)


def _read_chunk_arrow(
    view: FeatureView, dataset: ds.Dataset, lo: pd.Timestamp, hi: pd.Timestamp
) -> pa.Table:
    # The file's filter is 1 µs wider than [lo, hi), so that rounding ns to µs cannot
    # move a row across a bound; the exact cut is made on the µs times.
    kind = dataset.schema.field(view.timestamp).type
    scale = 1_000 if kind.unit == "ns" else 1
    lo_us, hi_us = int(lo.value // 1_000), int(hi.value // 1_000)
    field = ds.field(view.timestamp)
    where = (field >= pa.scalar((lo_us - 1) * scale, kind)) & (
        field < pa.scalar((hi_us + 1) * scale, kind)
    )
    table = _read_arrow(view, dataset, list(view.source_columns), where)
    stamps = _utc_micros(table[view.timestamp])
    inside = (stamps >= lo_us) & (stamps < hi_us)
    return table if bool(inside.all()) else table.filter(pa.array(inside))


def _utc_micros(column: pa.ChunkedArray) -> np.ndarray:
    """A ``timestamp[us, UTC]`` column without nulls as epoch µs (int64)."""
    return column.cast(pa.int64()).to_numpy()


def compute_chunk(view: FeatureView, chunk: Chunk) -> pa.Table:
    """The view's feature rows for events in the chunk's days, in a total order
    (:func:`~mlops.features.rolling.order_columns`)."""
    return compute_rolling(view, read_chunk_events(view, chunk), start=chunk.start)


def _ts_literal(value: datetime | pd.Timestamp) -> str:
    return f"TIMESTAMPTZ '{to_utc(value).isoformat()}'"


def latest_rows(view: FeatureView, table: pa.Table) -> pa.Table:
    """Each entity's newest row of ``table`` (by event time; the later row on ties)."""
    if table.num_rows == 0:
        return table
    stamps = table[view.timestamp].combine_chunks().cast(pa.int64()).to_numpy()
    # Feature rows come in time order already; only sort what does not.
    ordered = (
        table
        if bool(np.all(stamps[1:] >= stamps[:-1]))
        else table.take(
            pc.sort_indices(table[view.timestamp])  # stable
        )
    )
    keys = ordered[view.entity].to_pandas()
    last = np.flatnonzero(~keys.duplicated(keep="last").to_numpy())
    return ordered.take(pa.array(last))


def split_days(
    view: FeatureView, table: pa.Table, days: list[date]
) -> Iterator[tuple[date, pa.Table]]:
    """Each day's slice of a time-sorted table (empty slices for days without rows)."""
    stamps = table[view.timestamp].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    for day in days:
        lo_us = int(to_utc(day.isoformat()).value // 1000)
        hi_us = lo_us + 86_400_000_000
        i, j = np.searchsorted(stamps, [lo_us, hi_us], side="left")
        yield day, table.slice(int(i), int(j - i))


def materialize_chunk(
    view: FeatureView,
    chunk: Chunk,
    *,
    offline: OfflineStore,
    online: OnlineStore,
    already_online: pa.Array | None = None,
) -> ChunkResult:
    """Compute one chunk, replace its day partitions, and send online each entity's
    newest row unless ``already_online`` holds it (a newer chunk sent a newer row).

    Chunks are run newest first, so each entity goes online once, from the chunk with
    its newest row. The Parquet writes run on threads (encoding releases the GIL) while
    the online store takes its rows.
    """
    table = compute_chunk(view, chunk)
    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
        writes = [
            pool.submit(offline.write_partition, view, day, part)
            for day, part in split_days(view, table, chunk.days)
        ]
        latest = latest_rows(view, table)
        if already_online is not None and len(already_online) and latest.num_rows:
            latest = latest.filter(pc.invert(pc.is_in(latest[view.entity], already_online)))
        try:
            entities_online = write_latest(view, latest, online=online)
        finally:
            partitions = len([w.result() for w in writes])
    max_ts = None
    if table.num_rows:
        max_ts = to_utc(pc.max(table[view.timestamp]).as_py()).to_pydatetime()
    logger.info(
        "%s: chunk %s..%s: %d rows, %d partitions, %d entities online",
        view.ref,
        chunk.start.date(),
        chunk.end.date(),
        table.num_rows,
        partitions,
        entities_online,
    )
    return ChunkResult(
        chunk=chunk,
        rows=table.num_rows,
        partitions=partitions,
        max_event_ts=max_ts,
        entities_online=entities_online,
        sent_online=latest[view.entity].combine_chunks(),
    )


class Totals:
    """What the chunks of a plan have done so far, and which entities went online."""

    def __init__(self, the_plan: Plan) -> None:
        self.plan = the_plan
        self.rows = self.partitions = self.chunks_done = 0
        self.max_event_ts: datetime | None = None
        self.entities_online = 0
        self.sent_online: pa.Array = pa.array([], pa.string())
        self._last: ChunkResult | None = None

    @property
    def last(self) -> ChunkResult:
        assert self._last is not None, "no chunk added yet"
        return self._last

    def add(self, done: ChunkResult) -> None:
        self.rows += done.rows
        self.partitions += done.partitions
        self.chunks_done += 1
        self.entities_online += done.entities_online
        if len(done.sent_online):
            self.sent_online = pa.concat_arrays([self.sent_online, done.sent_online])
        if done.max_event_ts is not None:
            self.max_event_ts = max(self.max_event_ts or done.max_event_ts, done.max_event_ts)
        self._last = done

    def result(self) -> MaterializeResult:
        view = self.plan.view
        return MaterializeResult(
            view=view.name,
            version=view.version,
            start=self.plan.window.start,
            end=self.plan.window.end,
            rows=self.rows,
            partitions=self.partitions,
            entities_online=self.entities_online,
            max_event_ts=self.max_event_ts,
            chunks=self.chunks_done,
        )


def write_latest(view: FeatureView, latest: pa.Table | None, *, online: OnlineStore) -> int:
    """Upsert the newest row per entity into the online store; returns rows written."""
    online.update(view.name)
    if latest is None or latest.num_rows == 0:
        return 0
    return online.write_batch(
        view=view.name,
        version=view.version,
        frame=latest.to_pandas(),
        entity=view.entity,
        timestamp=view.timestamp,
        features=view.feature_names,
        ttl=view.ttl,
    )


def materialize_view(
    view: FeatureView,
    *,
    offline: OfflineStore,
    online: OnlineStore,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    chunk_days: int | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    progress: Callable[[int, int, ChunkResult], None] | None = None,
) -> MaterializeResult:
    """Materialize ``view`` over whole UTC days in [start, end) (default: the source's days).

    ``progress(done, total, result)`` is called after each chunk.
    """
    the_plan = plan(view, start=start, end=end, chunk_days=chunk_days, chunk_events=chunk_events)
    totals = Totals(the_plan)
    for chunk in reversed(the_plan.chunks):  # newest first: each entity goes online once
        totals.add(
            materialize_chunk(
                view, chunk, offline=offline, online=online, already_online=totals.sent_online
            )
        )
        if progress is not None:
            progress(totals.chunks_done, len(the_plan.chunks), totals.last)
    return totals.result()
