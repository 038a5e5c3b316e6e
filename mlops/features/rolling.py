"""A feature view's rows computed in numpy: the fast twin of the DuckDB engine.

:func:`compute_rolling` takes the Arrow table of a chunk's events (its days plus the
aggregation look-back) and returns what :func:`mlops.features.materialize.compute_chunk`
returns for the same events: the same rows, in the same total order, with the same
schema and the same values, bit for bit (see "Exactness" below).

How it works, vectorized throughout (no Python loop over rows or entities):

* **Entities** get codes from their *sorted* text form (the key cast to text, as the SQL
  engine casts it; a null key sorts last), so ordering by code is ordering by the text.
* **Frames.** Rows are sorted by ``(code, time)`` through one int64 key,
  ``code * stride + (time - t0)`` with ``stride`` greater than the time span plus the
  longest window, so an entity's frame ``[t - w, t]`` is one key range found with
  ``searchsorted``: its left end is the first key ``>= key - w``, its right end is past
  the last key equal to the row's own — all events at the same instant are in, as in a
  ``RANGE`` frame. When the codes times the stride would overflow int64, the entities
  are processed in slices that fit.
* **count**, the non-null count and **sums** are differences of prefix sums. Sums are
  exact: a value becomes an int64 number of 1e-9 units, rounded the way DuckDB casts a
  DOUBLE to ``DECIMAL(38, 9)`` (half away from zero), and the prefix sums wrap around in
  two's complement — the difference of two wrapped prefix sums is still the exact
  window sum whenever that sum fits in int64, which a bound on the window's sum of
  ``|value|`` checks. A sum becomes a double as DuckDB casts a ``DECIMAL(38, 9)`` to
  DOUBLE; a **mean** is the int64 sum divided by ``count * 1e9`` in ``long double``
  and rounded to double, as DuckDB's windowed ``avg`` of a DECIMAL computes it.
* **min** and **max** use a sparse table built one level at a time (O(n) memory,
  O(n log L) time for frames of up to L rows) over order-preserving int64 images of the
  doubles, NaN above +inf as DuckDB orders it: each frame is answered at level
  ``floor(log2(length))`` from two overlapping blocks.
* **Order.** The SQL engine orders by (time, key text, created time, every feature).
  With sorted codes that is (time, code); rows of one entity at one instant share
  their frame, hence their aggregates, so only such rows need more: they are ordered by
  the created time and the plain features, NULLs last (DuckDB's default).
* **Big tables** (more than ``2 * PIECE_ROWS`` rows) are computed one time piece of
  about ``PIECE_ROWS`` rows (plus its look-back) at a time, each piece starting at an
  instant, so the pieces' rows follow one another; a piece's arrays stay in the CPU
  caches, which makes 10M rows about twice as fast as one pass.
* **Threads.** numpy and Arrow release the GIL, so independent steps run on a small
  thread pool: the windows' bounds, each column's aggregates, and the output order.

Exactness, against DuckDB 2.0 (checked by ``tests/unit/test_rolling.py``): counts, plain
features, min, max, sums and means are bit-identical. Two things DuckDB itself leaves
open: between ``-0.0`` and ``0.0`` in one frame, ``min``/``max`` here answer ``-0.0`` /
``0.0`` while DuckDB answers whichever its segment tree met first (equal as numbers); and
rows that differ only in the sign of a zero sort in either order.

What the fast path does not take goes to DuckDB (:func:`compute_rolling_sql`, the SQL
engine over the same table), which gives the answer — or the error — the SQL engine
always gave; the reason is logged. That is: a value beyond ±9e9 in a sum or mean, a
window whose sum of ``|value|`` might not fit in int64 units of 1e-9, NaN or infinity
in a sum or mean (DuckDB refuses to cast them), value columns other than integers,
floats and booleans, entity keys other than text or integers, and time columns that are
not timestamps in whole microseconds, or have nulls (a created time may be null).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops.errors import DataError, SchemaError
from mlops.features.compute import _quote, feature_sql
from mlops.features.definition import Aggregation, FeatureView
from mlops.features.source import to_utc

logger = logging.getLogger(__name__)

#: Sums and means add values as int64 multiples of 1e-9 (DuckDB's DECIMAL(38, 9) scale).
UNITS_PER_ONE = 1_000_000_000
#: The largest |value| the fast path sums: 9e9 is 9e18 units, still an int64.
MAX_ABS_SUMMED = 9e9

#: Tables of more than twice this many rows are computed in time pieces of about this
#: many rows (plus their look-back).
PIECE_ROWS = 2_000_000

_SAFE_SUM = 0.999 * 2.0**63  # below int64, with a margin for float rounding
_EXACT_DOUBLE = 2**53
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_FLOAT_SIGN_OFF = np.int64(0x7FFF_FFFF_FFFF_FFFF)


class _Unsupported(Exception):
    """Input the fast path does not take; the message says why."""


# --- the public API -----------------------------------------------------------------------
def output_schema(view: FeatureView) -> pa.Schema:
    """The schema of a view's feature rows: text key, UTC µs times, float64 features."""
    fields = [
        pa.field(view.entity, pa.string()),
        pa.field(view.timestamp, pa.timestamp("us", "UTC")),
    ]
    if view.created_timestamp:
        fields.append(pa.field(view.created_timestamp, pa.timestamp("us", "UTC")))
    fields += [pa.field(name, pa.float64()) for name in view.feature_names]
    return pa.schema(fields)


def order_columns(view: FeatureView) -> list[str]:
    """The columns feature rows are sorted by (a total order: every column)."""
    cols = [view.timestamp, view.entity]
    if view.created_timestamp:
        cols.append(view.created_timestamp)
    return cols + view.feature_names


def compute_rolling(
    view: FeatureView,
    events: pa.Table,
    *,
    start: datetime | None = None,
    threads: int | None = None,
) -> pa.Table:
    """The view's feature rows for the events with ``timestamp >= start``, in a total order.

    ``events`` holds the view's source columns with the look-back (events from
    ``start - view.max_window`` on), in any order. The result has the schema of
    :func:`output_schema` and is sorted by :func:`order_columns`, as the DuckDB engine
    computes it. Independent steps run on ``threads`` threads (default: one per CPU, at
    most 4). Input the fast path does not take is computed by :func:`compute_rolling_sql`
    instead, which raises :class:`~mlops.errors.DataError` where DuckDB fails; a missing
    column is a :class:`~mlops.errors.SchemaError`.
    """
    missing = [c for c in view.source_columns if c not in events.column_names]
    if missing:
        raise SchemaError(
            f"{view.ref}: events lack column(s) {', '.join(missing)} "
            f"(they have {', '.join(events.column_names) or 'none'})"
        )
    start_us = None if start is None else int(to_utc(start).value // 1_000)
    try:
        with ThreadPoolExecutor(threads or _default_threads()) as pool:
            return _compute(view, events, start_us, pool)
    except _Unsupported as why:
        logger.info("%s: %s: computing with DuckDB", view.ref, why)
        return compute_rolling_sql(view, events, start=start)


def _default_threads() -> int:
    """One per CPU this process may use, at most 4."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, usable or 1))


def compute_rolling_sql(
    view: FeatureView, events: pa.Table, *, start: datetime | None = None
) -> pa.Table:
    """The same rows from DuckDB (:func:`~mlops.features.compute.feature_sql`).

    The fallback of :func:`compute_rolling` and its reference: the query
    :func:`~mlops.features.materialize.compute_chunk` runs, over an Arrow table.
    """
    ts = _quote(view.timestamp)
    sql = f"SELECT * FROM ({feature_sql(view)}) AS f"
    if start is not None:
        sql += f" WHERE {ts} >= TIMESTAMPTZ '{to_utc(start).isoformat()}'"
    sql += " ORDER BY " + ", ".join(_quote(c) for c in order_columns(view))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("events", events)
        table = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise DataError(f"cannot compute the features of {view.ref}: {exc}") from exc
    finally:
        con.close()
    schema = output_schema(view)
    return table.select(schema.names).cast(schema)


# --- the fast path -------------------------------------------------------------------------
_Values = tuple[np.ndarray, np.ndarray | None]  # values (nulls as 0), valid mask (None: all)


@dataclass
class _Columns:
    """The events' columns as numpy arrays, read (and checked) once."""

    times: np.ndarray  # µs
    codes: np.ndarray  # entity codes: ranks of the keys' texts
    labels: pa.Array  # the keys' texts, by code
    plain: dict[str, _Values]  # plain features as doubles
    created: _Values | None  # µs
    units: dict[str, _Values]  # columns summed, in units of 1e-9
    extremes: dict[str, _Values]  # columns of min / max, as doubles

    def __len__(self) -> int:
        return self.times.size

    def pick(self, rows: slice | np.ndarray) -> _Columns:
        """These rows only (a slice is a view)."""

        def cut(v: _Values) -> _Values:
            return v[0][rows], None if v[1] is None else v[1][rows]

        return _Columns(
            self.times[rows],
            self.codes[rows],
            self.labels,
            {k: cut(v) for k, v in self.plain.items()},
            None if self.created is None else cut(self.created),
            {k: cut(v) for k, v in self.units.items()},
            {k: cut(v) for k, v in self.extremes.items()},
        )


@dataclass
class _Frames:
    """Rows in (entity, time) order and each output row's frame in that order."""

    order: np.ndarray  # input row of each sorted position
    codes: np.ndarray  # entity code per sorted position
    times: np.ndarray  # µs per sorted position
    rows: np.ndarray  # sorted positions of the output rows (time >= start), ascending
    right: np.ndarray  # per output row: end (exclusive) of its frame
    left: dict[int, np.ndarray]  # per window (µs), per output row: start of its frame


def _compute(view: FeatureView, events: pa.Table, start_us: int | None, pool: Executor) -> pa.Table:
    if events.num_rows == 0:
        return output_schema(view).empty_table()
    columns = _read(view, events)
    if len(columns) <= 2 * PIECE_ROWS:
        return _compute_piece(view, columns, start_us, pool)
    # A big table: one time piece (and its look-back) at a time. Each piece starts at an
    # instant, so the pieces' rows simply follow one another.
    times = columns.times
    if not (times[1:] >= times[:-1]).all():  # (rows of one instant: any order will do)
        columns = columns.pick(np.argsort(times))
        times = columns.times
    first = 0 if start_us is None else int(np.searchsorted(times, start_us))
    cuts = np.unique(np.append(np.searchsorted(times, times[first::PIECE_ROWS]), times.size))
    look_back = max((_window_micros(a) for a in view.aggregations), default=0)
    pieces = []
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        begin = int(np.searchsorted(times, times[lo] - look_back))
        pieces.append(_compute_piece(view, columns.pick(slice(begin, hi)), int(times[lo]), pool))
    return pa.concat_tables(pieces) if pieces else output_schema(view).empty_table()


def _read(view: FeatureView, events: pa.Table) -> _Columns:
    """The columns the view needs; raises :class:`_Unsupported` before any work."""
    codes, labels = _entity_codes(events[view.entity])
    plain = {c: _doubles(events[c], c) for c in view.features}
    units: dict[str, _Values] = {}
    extremes: dict[str, _Values] = {}
    for agg in view.aggregations:
        if agg.function in ("sum", "mean") and agg.column not in units:
            units[agg.column] = _fixed_point(events[agg.column], agg.column)
        elif agg.function in ("min", "max") and agg.column not in extremes:
            extremes[agg.column] = plain.get(agg.column) or _doubles(events[agg.column], agg.column)
    return _Columns(
        times=_micros(events[view.timestamp], view.timestamp, nullable=False)[0],
        codes=codes,
        labels=labels,
        plain=plain,
        created=(
            _micros(events[view.created_timestamp], view.created_timestamp, nullable=True)
            if view.created_timestamp
            else None
        ),
        units=units,
        extremes=extremes,
    )


def _compute_piece(
    view: FeatureView, columns: _Columns, start_us: int | None, pool: Executor
) -> pa.Table:
    """The feature rows of ``columns``' events with ``time >= start_us``."""
    schema = output_schema(view)
    n_codes = len(columns.labels)
    frames = _frames(view, columns.times, columns.codes, n_codes, start_us, pool)
    if frames.rows.size == 0:
        return schema.empty_table()
    ordering = pool.submit(
        _output_order, frames, n_codes, columns.plain, columns.created, view.features
    )
    values = _aggregate(view, frames, columns.units, columns.extremes, pool)
    out = ordering.result()
    # The output rows' keys and aggregates, in frame order, permuted at once by Arrow.
    rows = frames.rows
    arrays = [pa.array(_take(a, rows)) for a in (frames.codes, frames.times, frames.order)]
    arrays += [_nullable(*values[agg.feature_name]) for agg in view.aggregations]
    permuted = pa.Table.from_arrays(arrays, names=[str(i) for i in range(len(arrays))])
    permuted = permuted.take(pa.array(out))
    source_rows = permuted.column(2).to_numpy()
    result: list[pa.Array | pa.ChunkedArray] = [
        columns.labels.take(permuted.column(0)),
        permuted.column(1).cast(pa.timestamp("us", "UTC")),
    ]
    if columns.created is not None:
        result.append(_array(columns.created, source_rows, pa.timestamp("us", "UTC")))
    result += [_array(columns.plain[name], source_rows, pa.float64()) for name in view.features]
    result += permuted.columns[3:]
    return pa.Table.from_arrays(result, schema=schema)


def _take(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values[at]`` (read-only), through Arrow's take: faster than numpy's indexing."""
    if values.dtype == np.bool_:
        return _take(values.view(np.uint8), at).view(np.bool_)
    return pa.array(values).take(pa.array(at)).to_numpy()


def _nullable(values: np.ndarray, is_null: np.ndarray | None) -> pa.Array:
    return pa.array(values, mask=is_null)


def _array(values: _Values, rows: np.ndarray, kind: pa.DataType) -> pa.Array:
    """``values[rows]`` as an Arrow array of ``kind``, with its nulls."""
    data, valid = values
    mask = None if valid is None else ~_take(valid, rows)
    if pa.types.is_timestamp(kind):
        return pa.array(_take(data, rows), type=pa.int64(), mask=mask).cast(kind)
    return pa.array(_take(data, rows), type=kind, mask=mask)


# --- reading the columns -------------------------------------------------------------------
def _micros(column: pa.ChunkedArray, name: str, *, nullable: bool) -> _Values:
    """µs since the epoch (int64) and the valid mask (None without nulls)."""
    kind = column.type
    if not pa.types.is_timestamp(kind):
        raise _Unsupported(f"column {name!r} is {kind}, not a timestamp")
    if column.null_count and not nullable:
        raise _Unsupported(f"column {name!r} has null timestamps")
    raw = pc.fill_null(column.cast(pa.int64()), 0).to_numpy()
    if kind.unit == "ns":
        if (raw % 1_000).any():
            raise _Unsupported(f"column {name!r} has times finer than a microsecond")
        raw = raw // 1_000
    elif kind.unit != "us":
        raw = raw * _MICROS[kind.unit]
    return raw, _valid(column)


def _valid(column: pa.ChunkedArray) -> np.ndarray | None:
    if column.null_count == 0:
        return None
    return np.asarray(pc.is_valid(column).to_numpy(), dtype=bool)


def _numbers(column: pa.ChunkedArray, name: str) -> _Values:
    """The column's numpy values (nulls as 0) and valid mask; integers stay integers."""
    kind = column.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or kind in (pa.float32(), pa.float64())
    ):
        raise _Unsupported(f"column {name!r} is {kind}, not an integer, float or boolean")
    valid = _valid(column)
    filled = pc.fill_null(column, False if pa.types.is_boolean(kind) else 0)
    return np.asarray(filled.to_numpy()), valid


def _doubles(column: pa.ChunkedArray, name: str) -> _Values:
    """``CAST(column AS DOUBLE)``: float64 values (nulls as 0) and the valid mask."""
    values, valid = _numbers(column, name)
    return values.astype(np.float64, copy=False), valid


def _fixed_point(column: pa.ChunkedArray, name: str) -> _Values:
    """``CAST(column AS DECIMAL(38, 9))`` as int64 units of 1e-9 (nulls as 0)."""
    values, valid = _numbers(column, name)
    if values.dtype.kind in "iub":
        if values.size and (values.max() > MAX_ABS_SUMMED or values.min() < -MAX_ABS_SUMMED):
            raise _Unsupported(f"column {name!r} has a value beyond ±{MAX_ABS_SUMMED:g}")
        return values.astype(np.int64) * UNITS_PER_ONE, valid
    top, bottom = values.max(initial=0.0), values.min(initial=0.0)
    if not (top <= MAX_ABS_SUMMED and bottom >= -MAX_ABS_SUMMED):  # NaN fails too
        raise _Unsupported(
            f"column {name!r} has a value beyond ±{MAX_ABS_SUMMED:g}, NaN or infinity"
        )
    # DuckDB: round(value * 1e9) in double, half away from zero. The fraction below is
    # exact, and trunc(2 * fraction) is ±1 exactly when |fraction| >= 0.5.
    scaled = np.multiply(values, float(UNITS_PER_ONE), dtype=np.float64)
    whole = np.trunc(scaled)
    scaled -= whole
    scaled *= 2.0
    whole += np.trunc(scaled, out=scaled)
    return whole.astype(np.int64), valid


def _entity_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Per row, the rank of its key's text among the distinct keys (null: last).

    Returns the codes and the keys' texts in code order (a null text last if any). A
    dictionary-encoded column is used as it is, without hashing its values again.
    """
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
    ):
        raise _Unsupported(f"entity key is {kind}, not text or an integer")
    encoded = _dictionary(column)
    texts = encoded.dictionary.cast(pa.string())
    by_text = pc.sort_indices(texts).to_numpy()
    rank = np.empty(len(texts) + 1, dtype=np.int64)
    rank[by_text] = np.arange(len(texts))
    rank[-1] = len(texts)  # the null key
    indices = pc.fill_null(encoded.indices, len(texts)).to_numpy().astype(np.intp)
    labels = texts.take(pa.array(by_text))
    if encoded.indices.null_count:
        labels = pa.concat_arrays([labels, pa.nulls(1, pa.string())])
    return rank[indices], labels


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """The column as one dictionary array whose values are distinct and not null.

    Dictionary chunks that share one such dictionary are used as they are; anything
    else is encoded again (cheaper than unifying many big dictionaries).
    """
    chunks = column.chunks
    if pa.types.is_dictionary(column.type) and chunks:
        values = chunks[0].dictionary
        if (
            all(c.dictionary.equals(values) for c in chunks[1:])
            and values.null_count == 0
            and pc.count_distinct(values).as_py() == len(values)
        ):
            indices = pa.concat_arrays([c.indices for c in chunks])
            return pa.DictionaryArray.from_arrays(indices, values)
        column = column.cast(column.type.value_type)
    return pc.dictionary_encode(column.combine_chunks())


# --- frames --------------------------------------------------------------------------------
def _window_micros(agg: Aggregation) -> int:
    return int(agg.window.total_seconds()) * 1_000_000


def _frames(
    view: FeatureView,
    times: np.ndarray,
    codes: np.ndarray,
    n_codes: int,
    start_us: int | None,
    pool: Executor,
) -> _Frames:
    windows = sorted({_window_micros(a) for a in view.aggregations})
    t0 = int(times.min())
    stride = int(times.max()) - t0 + max(windows, default=0) + 1
    per_slice = max(1, (2**62) // stride)  # entities whose keys fit in int64
    if n_codes <= per_slice:
        key = codes * stride + (times - t0)
        order = np.argsort(key)
        slices: Iterator[tuple[int, np.ndarray]] = iter([(0, _take(key, order))])
        del key
    else:
        order = np.lexsort((times, codes))
    sorted_codes, sorted_times = _take(codes, order), _take(times, order)
    if n_codes > per_slice:
        slices = _slices(sorted_codes, sorted_times, t0, stride, per_slice)
    rows = np.arange(order.size) if start_us is None else np.flatnonzero(sorted_times >= start_us)
    right = np.empty(rows.size, dtype=np.int64)
    left = {w: np.empty(rows.size, dtype=np.int64) for w in windows}
    for lo, key in slices:
        q_lo, q_hi = np.searchsorted(rows, [lo, lo + key.size], side="left")
        at = rows[q_lo:q_hi] - lo
        found = pool.map(partial(_frame_bounds, key, at), [None, *windows])
        for w, bounds in zip([None, *windows], found, strict=True):
            (right if w is None else left[w])[q_lo:q_hi] = bounds + lo
    return _Frames(order, sorted_codes, sorted_times, rows, right, left)


def _frame_bounds(key: np.ndarray, at: np.ndarray, window: int | None) -> np.ndarray:
    """Of the frames at sorted positions ``at``: their starts for ``window``, else ends."""
    if window is None:
        return _run_ends(key)[at]
    return np.searchsorted(key, key[at] - window, side="left")


def _run_ends(key: np.ndarray) -> np.ndarray:
    """Per position of a sorted array: the end (exclusive) of its run of equal values."""
    change = key[1:] != key[:-1]
    ends = np.append(np.flatnonzero(change) + 1, key.size)
    run = np.empty(key.size, dtype=np.int64)
    run[0] = 0
    np.cumsum(change, out=run[1:])
    return ends[run]


def _slices(
    codes: np.ndarray, times: np.ndarray, t0: int, stride: int, per_slice: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Runs of whole entities whose keys fit in int64: first sorted position and keys.

    A run's keys are ``(code - its first code) * stride + (time - t0)``, sorted.
    """
    for first in range(0, int(codes[-1]) + 1, per_slice):
        lo, hi = (int(i) for i in np.searchsorted(codes, [first, first + per_slice]))
        if hi > lo:
            yield lo, (codes[lo:hi] - first) * stride + (times[lo:hi] - t0)


# --- aggregates ----------------------------------------------------------------------------
_Result = tuple[np.ndarray, np.ndarray | None]  # float64 values, null mask (None: no nulls)


def _aggregate(
    view: FeatureView,
    frames: _Frames,
    units: dict[str, _Values],
    extremes: dict[str, _Values],
    pool: Executor,
) -> dict[str, _Result]:
    """Each aggregation's values for the output rows (in ``frames.rows`` order).

    One task per column summed and per column's min or max, run on ``pool``.
    """
    order, right, left = frames.order, frames.right, frames.left
    sizes = {w: right - bounds for w, bounds in left.items()}  # events per frame: count(*)
    present: dict[tuple[str, int], np.ndarray] = {}  # non-null values per frame
    for column, (_, valid) in (units | extremes).items():
        windows = {
            _window_micros(a)
            for a in view.aggregations
            if a.column == column and a.function != "count"
        }
        if valid is None:
            present |= {(column, w): sizes[w] for w in windows}
        else:
            prefix = _prefix(_take(valid, order))
            present |= {(column, w): prefix[right] - prefix[left[w]] for w in windows}

    def sums(column: str) -> dict[str, _Result]:
        values, valid = units[column]
        ordered = _take(values, order)
        prefix = _prefix(ordered)  # wraps around: differences stay exact
        fitting = _sums_fit(ordered, frames, sizes)
        found: dict[str, _Result] = {}
        for agg in view.aggregations:
            if agg.column != column or agg.function not in ("sum", "mean"):
                continue
            w = _window_micros(agg)
            if w not in fitting:
                raise _Unsupported(f"a {agg.feature_name} window sum may not fit in int64")
            total = prefix[right] - prefix[left[w]]
            count = present[column, w]
            if agg.function == "sum":
                result = _decimal_to_double(total)
            else:
                result = _decimal_average(total, count if valid is None else np.maximum(count, 1))
            found[agg.feature_name] = (result, None if valid is None else count == 0)
        return found

    def extreme(task: tuple[str, str]) -> dict[str, _Result]:
        column, function = task
        doubles, valid = extremes[column]
        aggs = [a for a in view.aggregations if a.column == column and a.function == function]
        windows = sorted({_window_micros(a) for a in aggs})
        best = _range_extremes(
            _take(_ordered_bits(doubles, valid, function), order),
            [left[w] for w in windows],
            right,
            function,
        )
        found: dict[str, _Result] = {}
        for agg in aggs:
            w = _window_micros(agg)
            result, is_null = best[windows.index(w)], None
            if valid is not None:
                is_null = present[column, w] == 0
                result[is_null] = 0
            found[agg.feature_name] = (_from_ordered_bits(result), is_null)
        return found

    tasks: list[Callable[[], dict[str, _Result]]] = [partial(sums, c) for c in units]
    tasks += [
        partial(extreme, (a.column, a.function))
        for a in {(a.column, a.function): a for a in view.aggregations}.values()
        if a.function in ("min", "max")
    ]
    out: dict[str, _Result] = {
        agg.feature_name: (sizes[_window_micros(agg)].astype(np.float64), None)
        for agg in view.aggregations
        if agg.function == "count"
    }
    for found in pool.map(lambda task: task(), tasks):
        out |= found
    return out


def _prefix(values: np.ndarray) -> np.ndarray:
    """``[0, v0, v0 + v1, ...]`` in int64 (wrapping around on overflow)."""
    out = np.empty(values.size + 1, dtype=np.int64)
    out[0] = 0
    np.cumsum(values, out=out[1:])
    return out


def _sums_fit(units: np.ndarray, frames: _Frames, sizes: dict[int, np.ndarray]) -> set[int]:
    """The windows (µs) whose every frame sums to less than 2**63 units in absolute value.

    Cheap bounds first: the largest |value| times the most events in a frame, then the
    column's sum of |value|; else each frame's sum of |value| from float64 prefix sums,
    with slack for their rounding errors.
    """
    largest = float(max(int(units.max()), -int(units.min()))) if units.size else 0.0
    fitting = {w for w, n in sizes.items() if largest * float(n.max(initial=0)) < _SAFE_SUM}
    if len(fitting) == len(sizes):
        return fitting
    magnitude = np.abs(units).astype(np.float64)
    total = float(magnitude.sum())
    slack = 4.0 * (units.size + 2) * float(np.finfo(np.float64).eps) * total + 1.0
    if total + slack < _SAFE_SUM:
        return set(sizes)
    prefix = _prefix_float(magnitude)
    ends = prefix[frames.right]
    return fitting | {
        w
        for w, left in frames.left.items()
        if float((ends - prefix[left]).max(initial=0.0)) + 2.0 * slack < _SAFE_SUM
    }


def _prefix_float(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def _decimal_to_double(units: np.ndarray) -> np.ndarray:
    """DuckDB's ``CAST(DECIMAL(38, 9) AS DOUBLE)`` of int64 units.

    Up to 2**53 units (exact as a double): ``units / 1e9``; beyond, the whole part and
    the fraction converted apart: ``double(units div 1e9) + double(units mod 1e9) / 1e9``,
    both truncated toward zero.
    """
    result = units.astype(np.float64) / float(UNITS_PER_ONE)
    big = np.flatnonzero(np.abs(units) > _EXACT_DOUBLE)
    if big.size:
        wide = units[big]
        fraction = np.fmod(wide, UNITS_PER_ONE)
        whole = (wide - fraction) // UNITS_PER_ONE
        result[big] = whole.astype(np.float64) + fraction.astype(np.float64) / UNITS_PER_ONE
    return result


def _decimal_average(units: np.ndarray, count: np.ndarray) -> np.ndarray:
    """DuckDB's windowed ``avg`` of a ``DECIMAL(38, 9)``, as a double.

    DuckDB divides in ``long double``: ``sum / (count * 1e9)``, then rounds to double;
    numpy's ``longdouble`` is the same C type, so this is the same on every platform.
    """
    out = np.empty(units.size, dtype=np.float64)
    # exact operands (count < 2**33), the quotient in long double, rounded to double
    np.divide(units, count * UNITS_PER_ONE, out=out, dtype=np.longdouble, casting="unsafe")
    return out


def _ordered_bits(doubles: np.ndarray, valid: np.ndarray | None, function: str) -> np.ndarray:
    """int64 images of the doubles in DuckDB's order (NaN above +inf); nulls never win."""
    clean = np.where(np.isnan(doubles), np.nan, doubles)  # one NaN, the positive one
    bits = clean.view(np.int64)
    ordered = bits ^ ((bits >> 63) & _FLOAT_SIGN_OFF)
    if valid is not None:
        info = np.iinfo(np.int64)
        ordered[~valid] = info.max if function == "min" else info.min
    return ordered


def _from_ordered_bits(ordered: np.ndarray) -> np.ndarray:
    return (ordered ^ ((ordered >> 63) & _FLOAT_SIGN_OFF)).view(np.float64)


def _range_extremes(
    values: np.ndarray, lefts: list[np.ndarray], right: np.ndarray, function: str
) -> list[np.ndarray]:
    """min or max of ``values[left:right]`` per query, for each list of left ends.

    A sparse table built one level at a time: level k holds the extreme of each run of
    2**k values; a frame of length L is answered at k = floor(log2(L)) from the runs at
    its two ends (they overlap). Every frame holds at least its own row.
    """
    op = np.minimum if function == "min" else np.maximum
    left = np.concatenate(lefts)
    ends = np.tile(right, len(lefts))
    level = _floor_log2(ends - left)
    out = values[left]  # level 0: frames of one row
    table = values
    for k in range(1, int(level.max(initial=0)) + 1):
        half = 1 << (k - 1)
        table = op(table[:-half], table[half:])
        ids = np.flatnonzero(level == k)
        out[ids] = op(table[left[ids]], table[ends[ids] - (1 << k)])
    return np.split(out, len(lefts))


def _floor_log2(lengths: np.ndarray) -> np.ndarray:
    """floor(log2(n)) of positive integers, as uint8."""
    if lengths.size and int(lengths.max()) < _SMALL_LOG2:
        return _small_log2()[lengths]
    return (np.frexp(lengths.astype(np.float64))[1] - 1).astype(np.uint8)


_SMALL_LOG2 = 1 << 16


@cache
def _small_log2() -> np.ndarray:
    table = np.zeros(_SMALL_LOG2, dtype=np.uint8)
    table[1:] = np.frexp(np.arange(1, _SMALL_LOG2, dtype=np.float64))[1] - 1
    return table


# --- output order --------------------------------------------------------------------------
def _output_order(
    frames: _Frames,
    n_codes: int,
    plain: dict[str, _Values],
    created: _Values | None,
    features: tuple[str, ...],
) -> np.ndarray:
    """The permutation of the output rows into (time, key, created, *features) order."""
    times = _take(frames.times, frames.rows)
    codes = _take(frames.codes, frames.rows)
    t_lo = int(times.min())
    if (int(times.max()) - t_lo + 1) * n_codes < 2**63:
        out = np.argsort((times - t_lo) * n_codes + codes)
    else:
        out = np.lexsort((codes, times))
    # Rows of one entity at one instant (neighbours in frame order) share their frame,
    # hence their aggregates: order them by the created time and the plain features,
    # NULLs last, like DuckDB's ORDER BY.
    tied = (times[1:] == times[:-1]) & (codes[1:] == codes[:-1])
    if (created is None and not features) or not tied.any():
        return out
    in_group = np.zeros(out.size, dtype=bool)
    in_group[1:] |= tied
    in_group[:-1] |= tied
    at = np.flatnonzero(in_group[out])  # positions in the output: runs of tied rows
    picked = out[at]
    source_rows = frames.order[frames.rows[picked]]
    keys: list[np.ndarray] = []  # np.lexsort: the last key is the most significant
    sources = [plain[name] for name in reversed(features)]
    if created is not None:
        sources.append(created)
    for values, valid in sources:
        chosen = values[source_rows]
        if valid is None:
            keys.append(chosen)
        else:
            ok = valid[source_rows]
            keys += [np.where(ok, chosen, 0), ~ok]
    keys += [codes[picked], times[picked]]
    out[at] = picked[np.lexsort(keys)]
    return out
