"""Point-in-time joins: training rows that only see features known at label time.

For a label of entity ``e`` at time ``t``, a view contributes its feature row of ``e``
with the greatest feature timestamp ``ts`` such that ``t - ttl <= ts <= t``; no such row
leaves that view's features missing (NaN) and ``<view>__feature_timestamp`` null. When
the view has a ``created_timestamp`` (when each row reached the source), a row only
counts from ``max(ts, created)``: the candidates are the rows with ``ts <= t``,
``created <= t`` and ``ts >= t - ttl`` (a row without a created time counts from
``ts``). Ties on ``ts`` go to the greatest created time, then to the later row (a later
partition, or further down a file or frame).

The engine (DuckDB, then Arrow) works in two steps per view:

1. *Match* on narrow columns only (entity, times, where each row lives): an ``ASOF
   JOIN`` whose inequality is a struct, so ties are broken inside the join:
   ``(ts, file, row) <= (t, +inf, +inf)``. With a created time, each entity's rows are
   first ordered by availability ``a = max(ts, created)`` and only the rows whose ``ts``
   is the running maximum of ``ts`` are kept (no other row can be the newest one
   available at any time); the ASOF then runs on ``(a, ts, created, file, row)``. The
   TTL is checked on the match: when the newest available row is older than the TTL,
   so is every other candidate.
2. *Gather*: the feature columns of each partition (or frame) that holds a match are
   read once, and the matched rows taken in label order.

Matching on narrow columns and fetching features after is what makes it fast: a plain
ASOF JOIN carries every feature column through its sort (about 2x slower at 1M labels x
10M feature rows, see ``benchmarks/pit_ours.py``) and picks arbitrarily among ties.

The result keeps the label rows' order (index reset) and columns, the entity as text
and the timestamp as UTC, and adds per view ``<view>__feature_timestamp`` and its
features.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops.datasets.catalog import open_catalog
from mlops.datasets.service import dataset_file
from mlops.errors import DataError, FeatureStoreError, SchemaError
from mlops.features.definition import FeatureView
from mlops.features.offline import OfflineStore
from mlops.settings import Settings

logger = logging.getLogger(__name__)

KeyKind = Literal["int", "text", "other"]
_NAT = np.iinfo(np.int64).min  # NaT as int64
_INF = np.iinfo(np.int64).max  # "+inf" on the label side of the ASOF struct
_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def feature_timestamp_column(view: FeatureView) -> str:
    return f"{view.name}__feature_timestamp"


# --- public API ---------------------------------------------------------------------------
def point_in_time_join(
    labels: pd.DataFrame,
    *,
    entity: str,
    timestamp: str,
    views: list[tuple[FeatureView, pd.DataFrame]],
) -> pd.DataFrame:
    """``labels`` with each view's features as of each label's time.

    ``views`` pairs each view with its offline rows (in memory). The result keeps the
    labels' order and adds, per view, ``<view>__feature_timestamp`` and its features.
    """
    prepared = _prepare_labels(labels, entity=entity, timestamp=timestamp)
    _check_names(labels, [view for view, _ in views])
    with _connection() as con:
        parts = [_join_view(con, prepared, _FrameRows(view, rows)) for view, rows in views]
    return _assemble(prepared, parts)


def historical_features(
    labels: pd.DataFrame | str | Path,
    *,
    entity: str,
    timestamp: str,
    views: Sequence[FeatureView],
    offline: OfflineStore,
) -> pd.DataFrame:
    """``labels`` (a frame or a Parquet file) joined point-in-time with ``views``, read
    straight from the offline store.

    Only the partitions that can matter are read: the days of
    ``[min label time - ttl, max label time]``. A partition missing among the view's
    materialized days, or unreadable, raises :class:`FeatureStoreError` naming the file.
    """
    frame = _read_labels(labels)
    prepared = _prepare_labels(frame, entity=entity, timestamp=timestamp)
    _check_names(frame, views)
    with _connection() as con:
        parts = [_join_view(con, prepared, _partitions(offline, v, prepared)) for v in views]
    return _assemble(prepared, parts)


def labels_from_dataset(
    settings: Settings, name: str, version: int | None = None
) -> tuple[pd.DataFrame, str, str]:
    """A registered dataset's rows and its recorded entity and timestamp column names
    (the latest version when ``version`` is None), ready for :func:`historical_features`.
    """
    assert settings.datasets.catalog_url is not None  # resolved by Settings
    catalog = open_catalog(settings.datasets.catalog_url)
    try:
        record = catalog.get(name, version)
    finally:
        catalog.engine.dispose()
    path = dataset_file(settings, record)
    try:
        frame = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(
            f"dataset {name!r} version {record.version}: cannot read {path}: {exc}"
        ) from exc
    return frame, record.entity, record.timestamp


# --- labels ------------------------------------------------------------------------------
@dataclass
class _Labels:
    """The label rows as the result shows them, and what the joins need of them."""

    frame: pd.DataFrame  # the labels, entity as text, timestamp as UTC, index reset
    keys: pd.Series  # the entity values as given
    text: np.ndarray  # the entity values as text (None where null)
    t_ns: np.ndarray  # label times, int64 ns since the epoch
    rows: np.ndarray  # positions of the labels that can match (entity and time present)


def _read_labels(labels: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(labels, pd.DataFrame):
        return labels
    path = Path(labels)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read label file {path} as Parquet: {exc}") from exc


def _prepare_labels(labels: pd.DataFrame, *, entity: str, timestamp: str) -> _Labels:
    for col in (entity, timestamp):
        if col not in labels.columns:
            raise SchemaError(f"label rows have no column {col!r}")
    stamps = _utc(labels[timestamp], f"label column {timestamp!r}")
    keys = labels[entity].reset_index(drop=True)
    text = keys.astype(str).where(keys.notna(), None)
    frame = labels.reset_index(drop=True).assign(**{entity: text, timestamp: stamps.array})
    usable = keys.notna().to_numpy() & stamps.notna().to_numpy()
    return _Labels(
        frame=frame,
        keys=keys,
        text=text.to_numpy(dtype=object),
        t_ns=_as_ns(stamps),
        rows=np.flatnonzero(usable),
    )


def _check_names(labels: pd.DataFrame, views: Sequence[FeatureView]) -> None:
    seen: dict[str, str] = {}
    for view in views:
        for name in (feature_timestamp_column(view), *view.feature_names):
            if name in seen or name in labels.columns:
                other = seen.get(name, "the label rows")
                raise SchemaError(
                    f"feature {name!r} of view {view.name!r} clashes with {other}: "
                    "rename one (Aggregation(name=...))"
                )
            seen[name] = f"view {view.name!r}"


# --- a view's rows: a frame in memory, or offline partitions --------------------------------
@dataclass
class _Match:
    """One view's matches: label position, feature time (ns), file and row of the match."""

    labels: np.ndarray
    fts_ns: np.ndarray
    files: np.ndarray
    rows: np.ndarray

    def take(self, order: np.ndarray) -> _Match:
        return _Match(self.labels[order], self.fts_ns[order], self.files[order], self.rows[order])


class _Rows(Protocol):
    view: FeatureView
    files: list[Path]  # the Parquet files read (none for a frame)

    def key_kind(self) -> KeyKind: ...

    def narrow(self, con: duckdb.DuckDBPyConnection, *, text_keys: bool) -> tuple[str, str]:
        """SQL of the rows' ``e``, ``ts``, ``c``, ``fi``, ``rn``; the unit of its times."""
        ...

    def gather(self, match: _Match) -> pa.Table:
        """The feature columns of the matched rows, in ``match`` order."""
        ...


class _FrameRows:
    """A view's rows given as a DataFrame (:func:`point_in_time_join`)."""

    def __init__(self, view: FeatureView, rows: pd.DataFrame) -> None:
        missing = [c for c in _columns(view) if c not in rows.columns]
        if missing:
            raise SchemaError(f"rows of view {view.name!r} have no column(s) {missing}")
        self.view = view
        self.rows = rows.reset_index(drop=True)
        self.files: list[Path] = []

    def key_kind(self) -> KeyKind:
        return "int" if pd.api.types.is_integer_dtype(self.rows[self.view.entity]) else "other"

    def narrow(self, con: duckdb.DuckDBPyConnection, *, text_keys: bool) -> tuple[str, str]:
        view, rows = self.view, self.rows
        keys = rows[view.entity]
        columns = {
            "e": pa.array(keys.astype(str).where(keys.notna(), None), pa.string())
            if text_keys
            else pa.array(keys, pa.int64(), from_pandas=True),
            "ts": _masked(_as_ns(_utc(rows[view.timestamp], f"{view.name}.{view.timestamp}"))),
            "fi": pa.array(np.zeros(len(rows), dtype="int64")),
            "rn": pa.array(np.arange(len(rows), dtype="int64")),
        }
        created = view.created_timestamp
        if created:
            columns["c"] = _masked(_as_ns(_utc(rows[created], f"{view.name}.{created}")))
        con.register("view_rows", pa.table(columns))
        return _narrow_sql("view_rows", "e", "ts", "c" if created else None, epoch=None), "ns"

    def gather(self, match: _Match) -> pa.Table:
        table = pa.Table.from_pandas(self.rows[self.view.feature_names], preserve_index=False)
        return table.take(pa.array(match.rows))


@dataclass
class _Partitions:
    """A view's offline partitions that can matter to the labels (:func:`historical_features`)."""

    view: FeatureView
    files: list[Path]
    schemas: list[pa.Schema]

    def key_kind(self) -> KeyKind:
        types = {s.field(self.view.entity).type for s in self.schemas}
        if all(pa.types.is_integer(t) for t in types):
            return "int"
        if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types):
            return "text"
        return "other"

    def narrow(self, con: duckdb.DuckDBPyConnection, *, text_keys: bool) -> tuple[str, str]:
        view = self.view
        times = [c for c in (view.timestamp, view.created_timestamp) if c]
        units = {_unit(s.field(c).type) for s in self.schemas for c in times}
        unit = "ns" if "ns" in units else "us"
        same = all(s.equals(self.schemas[0]) for s in self.schemas[1:])
        source = "read_parquet($files, file_row_number = true{})".format(
            "" if same else ", union_by_name = true"
        )
        entity = _ident(view.entity)
        sql = _narrow_sql(
            source,
            f"CAST({entity} AS VARCHAR)" if text_keys and self.key_kind() != "text" else entity,
            _ident(view.timestamp),
            _ident(view.created_timestamp) if view.created_timestamp else None,
            epoch=f"epoch_{unit}",
            file="file_index",
            row="file_row_number",
        )
        return sql, unit

    def gather(self, match: _Match) -> pa.Table:
        """Read each partition holding a match once; take its matched rows."""
        view = self.view
        if not len(match.files):
            return pa.table({n: pa.array([], pa.float64()) for n in view.feature_names})
        parts = []
        starts = np.flatnonzero(np.diff(match.files, prepend=-1))
        for lo, hi in zip(starts, [*starts[1:], len(match.files)], strict=True):
            path = self.files[int(match.files[lo])]
            table = _read_partition(path, [view.timestamp, *view.feature_names])
            table = table.take(pa.array(match.rows[lo:hi]))
            # the row is the one matched: guards against a day rewritten meanwhile
            if not np.array_equal(_arrow_ns(table.column(view.timestamp)), match.fts_ns[lo:hi]):
                raise FeatureStoreError(
                    f"offline partition {path} changed while it was read: "
                    "build the training set again"
                )
            parts.append(table.drop_columns([view.timestamp]))
        return pa.concat_tables(parts, promote_options="permissive")


def _partitions(offline: OfflineStore, view: FeatureView, labels: _Labels) -> _Partitions:
    """The readable partitions of the days ``[min label - ttl, max label]``."""
    if not len(labels.rows):
        return _Partitions(view=view, files=[], schemas=[])
    days = offline.days(view)
    if not days:
        raise FeatureStoreError(
            f"offline store has no partitions of {view.ref} under {offline.view_dir(view)}: "
            f"materialize the view first (`mlops materialize {view.name}`)"
        )
    t = labels.t_ns[labels.rows]
    lo = (pd.Timestamp(int(t.min()), tz="UTC") - pd.Timedelta(view.ttl)).date()
    hi = pd.Timestamp(int(t.max()), tz="UTC").date()
    first, last = max(lo, days[0]), min(hi, days[-1])
    if first > last:
        raise FeatureStoreError(
            f"offline store has no partitions of {view.ref} in [{lo}, {hi}] "
            f"(materialized: {days[0]}..{days[-1]}): materialize those days first"
        )
    have = set(days)
    gaps = [d for d in _day_range(first, last) if d not in have]
    if gaps:
        shown = ", ".join(str(offline.partition_path(view, d)) for d in gaps[:3])
        more = f" and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        raise FeatureStoreError(
            f"missing offline partition {shown}{more} of {view.ref}: "
            f"materialize {gaps[0]}..{gaps[-1]} again"
        )
    if hi > days[-1]:
        logger.warning(
            "labels reach %s but %s is materialized only up to %s: "
            "later labels get older features or none",
            hi,
            view.ref,
            days[-1],
        )
    files, schemas = [], []
    for day in _day_range(first, last):
        path = offline.partition_path(view, day)
        try:
            meta = pq.read_metadata(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise FeatureStoreError(
                f"corrupt offline partition {path}: {exc}; materialize that day again"
            ) from exc
        schema = meta.schema.to_arrow_schema()
        missing = [c for c in _columns(view) if c not in schema.names]
        if missing:
            raise FeatureStoreError(
                f"offline partition {path} has no column(s) {', '.join(missing)}: "
                "materialize that day again"
            )
        if meta.num_rows:  # an empty day has nothing to offer (and may type keys as text)
            files.append(path)
            schemas.append(schema)
    return _Partitions(view=view, files=files, schemas=schemas)


def _read_partition(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise FeatureStoreError(
            f"corrupt offline partition {path}: {exc}; materialize that day again"
        ) from exc


# --- the engine ----------------------------------------------------------------------------
@contextmanager
def _connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection for one join."""
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = false")
        yield con
    finally:
        con.close()


def _narrow_sql(
    source: str,
    entity: str,
    ts: str,
    created: str | None,
    *,
    epoch: str | None,
    file: str = "fi",
    row: str = "rn",
) -> str:
    """``e``, ``ts``, ``c`` (times as integers, through ``epoch`` when given), ``fi``, ``rn``."""

    def stamp(col: str) -> str:
        return f"{epoch}({col})" if epoch else col

    c = f", coalesce({stamp(created)}, {stamp(ts)}) AS c" if created else ""
    return (
        f"SELECT {entity} AS e, {stamp(ts)} AS ts{c}, {file}::BIGINT AS fi, "
        f"{row}::BIGINT AS rn FROM {source} WHERE {ts} IS NOT NULL"
    )


def _match_sql(source: str, *, created: bool) -> str:
    """Each label's newest available row: ``rid``, ``ts``, ``fi``, ``rn`` (no TTL yet)."""
    if not created:
        return f"""
        WITH f AS (SELECT e, {{'ts': ts, 'fi': fi, 'rn': rn}} AS k FROM ({source}))
        SELECT l.rid, f.k.ts AS ts, f.k.fi AS fi, f.k.rn AS rn
        FROM (SELECT rid, e, {{'ts': t, 'fi': {_INF}, 'rn': {_INF}}} AS k FROM label_rows) l
        ASOF JOIN f ON l.e = f.e AND l.k >= f.k
        """
    # Ordered by availability, a row whose ts is below the running maximum never is
    # the newest available row: keep the others, and match on availability first.
    return f"""
    WITH f AS (
        SELECT *, max(ts) OVER (
            PARTITION BY e ORDER BY greatest(ts, c)
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS newest
        FROM ({source})
    ),
    r AS (
        SELECT e, {{'a': greatest(ts, c), 'ts': ts, 'c': c, 'fi': fi, 'rn': rn}} AS k
        FROM f WHERE ts = newest
    )
    SELECT l.rid, r.k.ts AS ts, r.k.fi AS fi, r.k.rn AS rn
    FROM (SELECT rid, e, {{'a': t, 'ts': {_INF}, 'c': {_INF}, 'fi': {_INF}, 'rn': {_INF}}} AS k
          FROM label_rows) l
    ASOF JOIN r ON l.e = r.e AND l.k >= r.k
    """


def _match(con: duckdb.DuckDBPyConnection, labels: _Labels, rows: _Rows) -> _Match:
    view, files = rows.view, rows.files
    if not len(labels.rows) or (isinstance(rows, _Partitions) and not files):
        empty = np.array([], dtype="int64")
        return _Match(empty, empty, empty, empty)
    keys = labels.keys.iloc[labels.rows]
    text_keys = not (rows.key_kind() == "int" and pd.api.types.is_integer_dtype(keys))
    source, unit = rows.narrow(con, text_keys=text_keys)
    label_keys = (
        pa.array(labels.text[labels.rows], pa.string())
        if text_keys
        else pa.array(keys.to_numpy(dtype="int64"))
    )
    # floor to the rows' unit: ts <= t holds the same in either
    t = labels.t_ns[labels.rows] // _NS[unit]
    con.register("label_rows", pa.table({"rid": labels.rows, "e": label_keys, "t": t}))
    query = _match_sql(source, created=view.created_timestamp is not None)
    try:
        found = con.execute(query, {"files": [str(f) for f in files]} if files else None)
        result = found.fetchnumpy()
    except duckdb.Error as exc:
        if files:
            raise FeatureStoreError(
                f"cannot read the offline partitions of {view.ref} in {files[0].parent.parent} "
                f"({files[0].parent.name}..{files[-1].parent.name}): {exc}"
            ) from exc
        raise
    finally:
        con.unregister("label_rows")
    rid = np.asarray(result["rid"], dtype="int64")
    fts_ns = np.asarray(result["ts"], dtype="int64") * _NS[unit]
    fresh = fts_ns >= labels.t_ns[rid] - int(pd.Timedelta(view.ttl).value)  # exact, in ns
    return _Match(
        labels=rid[fresh],
        fts_ns=fts_ns[fresh],
        files=np.asarray(result["fi"], dtype="int64")[fresh],
        rows=np.asarray(result["rn"], dtype="int64")[fresh],
    )


def _join_view(con: duckdb.DuckDBPyConnection, labels: _Labels, rows: _Rows) -> pa.Table:
    """One view's ``<view>__feature_timestamp`` and features, one row per label."""
    started = time.perf_counter()
    match = _match(con, labels, rows)
    matched = time.perf_counter()
    match = match.take(np.lexsort((match.rows, match.files)))  # file by file, in row order
    features = rows.gather(match)
    # where each label's features are in `features`; null where it has none
    where = np.full(len(labels.frame), -1, dtype="int64")
    where[match.labels] = np.arange(len(match.labels))
    missing = where < 0
    fts = np.full(len(labels.frame), _NAT, dtype="int64")
    fts[match.labels] = match.fts_ns
    stamps = pa.array(fts, mask=missing).cast(pa.timestamp("ns", tz="UTC"))
    logger.debug(
        "%s: %d of %d labels matched (match %.2f s, gather %.2f s)",
        rows.view.ref,
        len(match.labels),
        len(labels.frame),
        matched - started,
        time.perf_counter() - matched,
    )
    picked = features.take(pa.array(where, mask=missing))
    return picked.add_column(0, feature_timestamp_column(rows.view), stamps)


def _assemble(labels: _Labels, parts: list[pa.Table]) -> pd.DataFrame:
    if not parts:
        return labels.frame
    return pd.concat([labels.frame, *(p.to_pandas() for p in parts)], axis=1, copy=False)


# --- small helpers -----------------------------------------------------------------------
def _columns(view: FeatureView) -> list[str]:
    """The columns a view's offline rows must have."""
    created = [view.created_timestamp] if view.created_timestamp else []
    return [view.entity, view.timestamp, *created, *view.feature_names]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _unit(t: pa.DataType) -> str:
    return str(t.unit) if pa.types.is_timestamp(t) else "us"


def _day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _utc(values: pd.Series, what: str) -> pd.Series:
    """Times as ``datetime64[ns, UTC]`` (naive = UTC); :class:`SchemaError` if they are not."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        # pandas would read numbers as nanoseconds since 1970: refuse them instead.
        raise SchemaError(f"{what} is not a timestamp (dtype {values.dtype})")
    try:
        stamps = pd.to_datetime(values, utc=True)
        return stamps.astype("datetime64[ns, UTC]")
    except (ValueError, TypeError, OverflowError) as exc:
        raise SchemaError(f"{what} is not a timestamp: {exc}") from exc


def _as_ns(stamps: pd.Series) -> np.ndarray:
    """``datetime64[ns, UTC]`` values as int64 ns since the epoch (NaT: int64's minimum)."""
    return stamps.dt.tz_localize(None).to_numpy().view("int64")


def _masked(ns: np.ndarray) -> pa.Array:
    return pa.array(ns, mask=ns == _NAT)


def _arrow_ns(values: pa.ChunkedArray) -> np.ndarray:
    """An Arrow timestamp column as int64 ns since the epoch (naive = UTC)."""
    if not pa.types.is_timestamp(values.type):
        return _as_ns(_utc(values.to_pandas(), "feature timestamp"))
    return values.cast(pa.int64()).to_numpy(zero_copy_only=False) * _NS[values.type.unit]
