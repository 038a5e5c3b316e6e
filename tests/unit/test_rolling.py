"""compute_rolling (numpy) against the DuckDB engine: the same rows, order and bits."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops.data.generate import generate_transactions
from mlops.errors import DataError, SchemaError
from mlops.features import rolling
from mlops.features.definition import AggFunction, Aggregation, FeatureView, Source
from mlops.features.materialize import Chunk, compute_chunk, read_chunk_events
from mlops.features.rolling import compute_rolling, compute_rolling_sql, output_schema
from mlops.specs import card_transactions_view

T0 = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)  # a coarse grid: ties, and events exactly at t - w
WINDOWS = (STEP, timedelta(hours=1), timedelta(hours=2), timedelta(days=1))
FUNCTIONS: tuple[AggFunction, ...] = ("count", "sum", "mean", "min", "max")
US_UTC = pa.timestamp("us", "UTC")


# --- helpers -------------------------------------------------------------------------------
def assert_same(got: pa.Table, want: pa.Table) -> None:
    """Same schema, same rows in the same order, floats equal bit for bit (NaN = NaN)."""
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got[name].combine_chunks(), want[name].combine_chunks()
        if not pa.types.is_floating(a.type):
            assert a.equals(b), name
            continue
        assert a.is_null().equals(b.is_null()), name
        x = a.fill_null(0.0).to_numpy(zero_copy_only=False)
        y = b.fill_null(0.0).to_numpy(zero_copy_only=False)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        numbers = ~np.isnan(x)
        bad = np.flatnonzero(x[numbers].view(np.int64) != y[numbers].view(np.int64))
        assert bad.size == 0, f"{name}: {x[numbers][bad[:5]]} != {y[numbers][bad[:5]]}"


@contextmanager
def fast_path_only() -> Iterator[None]:
    """Fails if compute_rolling falls back to DuckDB inside the block."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger(rolling.__name__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not records, records[0].getMessage()


def fast(
    view: FeatureView, events: pa.Table, start: datetime | None = None, threads: int | None = None
) -> pa.Table:
    with fast_path_only():
        return compute_rolling(view, events, start=start, threads=threads)


def view_of(
    aggregations: tuple[Aggregation, ...],
    *,
    features: tuple[str, ...] = ("amount",),
    created: str | None = None,
) -> FeatureView:
    return FeatureView(
        name="v",
        entity="key",
        timestamp="ts",
        source=Source(path=Path("unused.parquet")),
        features=features,
        aggregations=aggregations,
        created_timestamp=created,
    )


def every_function(column: str = "amount", windows: tuple[timedelta, ...] = WINDOWS) -> tuple:
    return tuple(
        Aggregation(column, fn, w, name=f"{column}_{fn}_{int(w.total_seconds())}")
        for w in windows
        for fn in FUNCTIONS
    )


def events(
    keys: Sequence[object],
    slots: Sequence[int],
    amounts: Sequence[float | None],
    *,
    key_type: pa.DataType = pa.string(),
    **extra: pa.Array,
) -> pa.Table:
    stamps = [T0 + s * STEP for s in slots]
    return pa.table(
        {
            "key": pa.array(keys, type=key_type),
            "ts": pa.array(stamps, type=US_UTC),
            "amount": pa.array(amounts, type=pa.float64()),
            **extra,
        }
    )


# --- the demo view, against compute_chunk over a Parquet source --------------------------
@pytest.fixture(scope="module")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = generate_transactions(n_entities=400, days=20, seed=7)
    path = tmp_path_factory.mktemp("rolling") / "transactions.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("first_day", [0, 9, 16])
def test_demo_view_matches_compute_chunk(demo_source: Path, first_day: int) -> None:
    view = card_transactions_view(Source.from_path(demo_source))
    start = datetime(2025, 12, 12, tzinfo=UTC) + timedelta(days=first_day)
    chunk = Chunk(start=start, end=start + timedelta(days=7))
    table = read_chunk_events(view, chunk)
    want = compute_rolling_sql(view, table, start=chunk.start)  # the SQL engine
    assert want.num_rows > 1000
    assert_same(fast(view, table, chunk.start), want)
    assert_same(compute_chunk(view, chunk), want)


def test_demo_view_whole_table_any_input_order(demo_source: Path) -> None:
    view = card_transactions_view(Source.from_path(demo_source))
    table = pq.read_table(demo_source, columns=view.source_columns)
    table = table.set_column(1, view.timestamp, table[view.timestamp].cast(US_UTC))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    want = compute_rolling_sql(view, table)
    assert_same(fast(view, table), want)
    assert_same(fast(view, shuffled), want)
    assert_same(fast(view, shuffled, threads=1), want)


# --- random small tables -------------------------------------------------------------------
TEXT_KEYS = ["a", "b", "B", "10", "9", "é", "", None]


@st.composite
def cases(draw: st.DrawFn) -> tuple[FeatureView, pa.Table, datetime | None]:
    int_keys = draw(st.booleans())
    key = st.one_of(st.none(), st.integers(-3, 11)) if int_keys else st.sampled_from(TEXT_KEYS)
    amount = st.one_of(
        st.none(),
        st.integers(-5000, 5000).map(lambda v: v / 100),
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.5e-9, -1.5e-9, 2.5e-9, 1e-10, 2.1e8, -2.2e8]),
    )
    qty = st.one_of(st.none(), st.integers(-(2 * 10**8), 2 * 10**8))  # 40 fit in a sum
    created = st.one_of(st.none(), st.integers(0, 8))
    rows = draw(
        st.lists(st.tuples(key, st.integers(0, 200), amount, qty, created), min_size=1, max_size=40)
    )
    windows = draw(st.lists(st.sampled_from(WINDOWS), min_size=1, max_size=3, unique=True))
    aggs = [
        Aggregation(column, fn, w, name=f"{column}_{fn}_{int(w.total_seconds())}")
        for w in windows
        for column in ("amount", "qty")
        for fn in draw(st.lists(st.sampled_from(FUNCTIONS), min_size=1, unique=True))
        if not (fn == "count" and column == "qty")
    ]
    features = draw(st.sampled_from([(), ("amount",), ("qty", "amount")]))
    with_created = draw(st.booleans())
    view = view_of(tuple(aggs), features=features, created="created" if with_created else None)
    table = events(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        key_type=pa.int64() if int_keys else pa.string(),
        qty=pa.array([r[3] for r in rows], type=pa.int64()),
        created=pa.array(
            [None if r[4] is None else T0 + (r[1] + r[4]) * STEP for r in rows], type=US_UTC
        ),
    )
    start = draw(st.one_of(st.none(), st.integers(0, 200).map(lambda s: T0 + s * STEP)))
    return view, table, start


@settings(max_examples=200, deadline=None, database=None)
@given(case=cases())
def test_matches_duckdb_on_random_tables(case: tuple[FeatureView, pa.Table, datetime | None]):
    view, table, start = case
    assert_same(fast(view, table, start), compute_rolling_sql(view, table, start=start))


# --- the order, ties and keys --------------------------------------------------------------
def test_rows_of_one_entity_at_one_instant_sort_by_created_then_features() -> None:
    view = view_of(
        (Aggregation("amount", "sum", timedelta(hours=1), name="s"),),
        features=("b",),
        created="created",
    )
    c1, c5 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=5)
    table = events(
        ["a"] * 6,
        [4] * 6,
        [1.0] * 6,
        b=pa.array([1.0, 3.0, None, 2.0, float("nan"), 0.5]),
        created=pa.array([c5, c1, c1, None, c1, c1], type=US_UTC),
    )
    got = fast(view, table)
    assert_same(got, compute_rolling_sql(view, table))
    # created 00:01 first, by b: numbers, NaN, then NULL (NULLs last); then 00:05; then
    # the NULL created time
    b = got["b"].to_pylist()
    assert b[:2] == [0.5, 3.0]
    assert np.isnan(b[2])
    assert b[3:] == [None, 1.0, 2.0]
    assert got["s"].to_pylist() == [6.0] * 6


def test_integer_keys_sort_as_text_and_null_keys_last() -> None:
    view = view_of((Aggregation("amount", "count", timedelta(hours=1), name="n"),))
    table = events([9, 10, None, 100, 9], [0] * 5, [1.0] * 5, key_type=pa.int64())
    got = fast(view, table)
    assert got["key"].to_pylist() == ["10", "100", "9", "9", None]
    assert got["n"].to_pylist() == [1.0, 1.0, 2.0, 2.0, 1.0]
    assert_same(got, compute_rolling_sql(view, table))


@pytest.mark.parametrize(
    "key_type", [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())]
)
def test_text_key_types(key_type: pa.DataType) -> None:
    view = view_of(every_function())
    rng = np.random.default_rng(1)
    keys = [str(k) for k in rng.integers(0, 30, 500)]
    table = events(keys, list(rng.integers(0, 300, 500)), list(rng.normal(size=500)))
    typed = table.set_column(0, "key", table["key"].cast(key_type))
    assert_same(fast(view, typed), compute_rolling_sql(view, table))


def test_dictionary_keys_across_chunks_with_repeated_or_null_values() -> None:
    view = view_of(every_function("amount", (timedelta(hours=2),)))
    dictionary = pa.array(["b", "a", "b", None, "c"])  # "b" twice, a null value
    chunks = [
        pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2]), pa.array(["x", "a", "b"])),
        pa.DictionaryArray.from_arrays(pa.array([0, 2, 1, 3, 4, 0]), dictionary),
    ]
    plain = ["x", "a", None, "b", "b", "b", "a", None, "c", "b"]
    table = events(plain, [0, 1, 1, 2, 3, 3, 4, 4, 5, 6], [1.0, 2.0, 3.0, 4.0, 5.0] * 2)
    typed = table.set_column(0, "key", pa.chunked_array(chunks))
    assert typed["key"].to_pylist() == plain
    want = compute_rolling_sql(view, table)
    assert_same(fast(view, typed), want)
    # one dictionary of distinct values shared by the chunks: used as it is
    for second in (chunks[0].dictionary, pa.array(["c", "x"])):
        keys = pa.chunked_array(
            [chunks[0], pa.DictionaryArray.from_arrays(pa.array([1, 0]), second)]
        )
        table = events(keys.to_pylist(), [0, 1, 1, 2, 3, 4], [1.0, 2.0, 3.0] * 2)
        want = compute_rolling_sql(view, table)
        assert_same(fast(view, table.set_column(0, "key", keys)), want)


@pytest.mark.parametrize("unit", ["s", "ms", "ns"])
def test_other_timestamp_units(unit: str) -> None:
    view = view_of(every_function(), created="created")
    table = events(["a", "b", "a"], [0, 1, 4], [1.0, 2.0, 3.0], created=pa.array([T0] * 3, US_UTC))
    other = table.set_column(1, "ts", table["ts"].cast(pa.timestamp(unit, "UTC")))
    other = other.set_column(3, "created", other["created"].cast(pa.timestamp(unit, "UTC")))
    assert_same(fast(view, other), compute_rolling_sql(view, table))


# --- min and max, NaN and infinities -------------------------------------------------------
def test_nan_is_the_largest_value_as_in_duckdb() -> None:
    view = view_of(
        tuple(
            Aggregation("amount", fn, timedelta(hours=1), name=fn) for fn in ("min", "max", "count")
        )
    )
    nan, inf = float("nan"), float("inf")
    table = events(["a"] * 6, [0, 1, 2, 3, 8, 9], [nan, 1.0, -inf, None, inf, nan])
    got = fast(view, table)
    assert_same(got, compute_rolling_sql(view, table))
    assert got["min"].to_pylist()[:5] == [
        pytest.approx(nan, nan_ok=True),
        1.0,
        -inf,
        -inf,
        inf,
    ]


def test_booleans_and_small_integers() -> None:
    view = view_of(
        every_function("flag", (timedelta(hours=1),)) + every_function("n", (timedelta(hours=2),)),
        features=("flag", "n"),
    )
    table = events(
        ["a", "a", "b", "a"],
        [0, 1, 1, 5],
        [1.0] * 4,
        flag=pa.array([True, None, False, True]),
        n=pa.array([3, -7, None, 100], type=pa.int8()),
    )
    assert_same(fast(view, table), compute_rolling_sql(view, table))


def test_float32_values_round_as_duckdb() -> None:
    view = view_of(every_function("f", (timedelta(days=1),)), features=("f",))
    rng = np.random.default_rng(3)
    values = (rng.normal(size=300) * 10.0 ** rng.integers(-6, 6, 300)).astype(np.float32)
    table = events(["a", "b", "c"] * 100, list(rng.integers(0, 300, 300)), [0.0] * 300)
    table = table.append_column("f", pa.array(values))
    assert_same(fast(view, table), compute_rolling_sql(view, table))


# --- exact sums: wraparound, overflow and the fallback ------------------------------------
def test_prefix_sums_may_wrap_around_when_every_window_fits() -> None:
    # 4000 events of ±4.5e9: the column's sum of |value| is 1.8e13 (1.8e22 units, far
    # beyond int64), but a 15-minute window holds 2 events of a key: 9e18 units < 2**63.
    view = view_of(every_function("amount", (STEP,)))
    signs = np.where(np.arange(4000) % 3 == 0, -1.0, 1.0)
    table = events(["a", "b"] * 2000, list(np.arange(4000) // 2), list(4.5e9 * signs))
    got = fast(view, table)
    assert_same(got, compute_rolling_sql(view, table))
    assert max(got["amount_sum_900"].to_pylist()) == 9e9


def test_one_big_value_among_small_ones_stays_on_the_fast_path() -> None:
    view = view_of(every_function("amount", (timedelta(hours=1),)))
    table = events(["a"] * 4, [0, 1, 2, 3], [8e9, 0.25, -1.5, 2.0])
    assert_same(fast(view, table), compute_rolling_sql(view, table))


@pytest.mark.parametrize(
    "amounts",
    [
        [5e9, 5e9, -1.0],  # a window sum of 1e10 is 1e19 units: beyond int64
        [1e12, 1.0, 2.0],  # one value beyond ±9e9
    ],
)
def test_sums_that_do_not_fit_fall_back_to_duckdb(
    amounts: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    view = view_of(every_function("amount", (timedelta(hours=1),)))
    table = events(["a"] * 3, [0, 1, 2], amounts)
    with caplog.at_level(logging.INFO, logger=rolling.__name__):
        got = compute_rolling(view, table)
    assert "computing with DuckDB" in caplog.text
    assert_same(got, compute_rolling_sql(view, table))
    assert got["amount_sum_3600"].to_pylist()[:2] == [amounts[0], amounts[0] + amounts[1]]


def test_min_and_max_alone_take_any_finite_value() -> None:
    view = view_of(
        tuple(Aggregation("amount", fn, timedelta(hours=1), name=fn) for fn in ("min", "max"))
    )
    table = events(["a"] * 3, [0, 1, 2], [1e300, -1e300, 5e9])
    assert_same(fast(view, table), compute_rolling_sql(view, table))


def test_nan_in_a_sum_is_duckdbs_error() -> None:
    view = view_of(every_function("amount", (timedelta(hours=1),)))
    table = events(["a"] * 2, [0, 1], [1.0, float("nan")])
    with pytest.raises(DataError, match=r"(?i)nan"):
        compute_rolling(view, table)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([Decimal("1.5"), None, Decimal("-2.25")], type=pa.decimal128(10, 2)),
        pa.array(["1.5", "2", None]),
    ],
)
def test_other_value_types_fall_back_to_duckdb(
    column: pa.Array, caplog: pytest.LogCaptureFixture
) -> None:
    view = view_of(every_function("x", (timedelta(hours=1),)), features=("x",))
    table = events(["a", "a", "b"], [0, 1, 1], [0.0] * 3, x=column)
    with caplog.at_level(logging.INFO, logger=rolling.__name__):
        got = compute_rolling(view, table)
    assert "computing with DuckDB" in caplog.text
    assert_same(got, compute_rolling_sql(view, table))


def beyond_the_fast_path(case: str) -> pa.Table:
    table = events(["a", "b", "a"], [0, 1, 2], [1.0, 2.0, 3.0], n=pa.array([1, 2, 3]))
    if case == "null time":
        return table.set_column(1, "ts", pa.array([T0, None, T0 + STEP], US_UTC))
    if case == "time finer than a microsecond":
        stamps = pa.array([T0, T0, T0 + STEP], pa.timestamp("ns", "UTC"))
        return table.set_column(1, "ts", pc.add(stamps, pa.array([1, 0, 0], pa.duration("ns"))))
    if case == "text time":
        return table.set_column(1, "ts", table["ts"].cast(pa.string()))
    if case == "integer beyond 9e9":
        return table.set_column(3, "n", pa.array([1, 10**10, 3]))
    assert case == "float key"
    return table.set_column(0, "key", pa.array([1.5, 2.0, 1.5]))


@pytest.mark.parametrize(
    "case",
    ["null time", "time finer than a microsecond", "text time", "integer beyond 9e9", "float key"],
)
def test_inputs_beyond_the_fast_path_get_what_duckdb_gives(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    view = view_of(every_function("n", (timedelta(hours=1),)), features=("amount",))
    table = beyond_the_fast_path(case)
    start = T0 + STEP
    caplog.set_level(logging.INFO, logger=rolling.__name__)
    try:
        want = compute_rolling_sql(view, table, start=start)
    except DataError as exc:
        with pytest.raises(DataError) as got:
            compute_rolling(view, table, start=start)
        assert str(got.value) == str(exc)
    else:
        assert_same(compute_rolling(view, table, start=start), want)
    assert "computing with DuckDB" in caplog.text


def test_frames_of_more_than_65536_rows() -> None:
    view = view_of(every_function("amount", (timedelta(days=1),)))
    n = 70_000
    table = pa.table(
        {
            "key": pa.array(["a"] * n),
            "ts": pa.array(T0.timestamp() * 1e6 + np.arange(n) * 1e3).cast(pa.int64()).cast(US_UTC),
            "amount": pa.array(np.random.default_rng(2).normal(size=n)),
        }
    )
    assert_same(fast(view, table), compute_rolling_sql(view, table))


# --- sizes and spans -----------------------------------------------------------------------
def test_empty_input_gives_an_empty_typed_table() -> None:
    view = view_of(every_function(), created="created")
    table = events([], [], [], created=pa.array([], US_UTC))
    got = fast(view, table)
    assert got.num_rows == 0
    assert got.schema == output_schema(view)
    assert_same(got, compute_rolling_sql(view, table))


def test_start_after_every_event_gives_an_empty_table() -> None:
    view = view_of(every_function())
    table = events(["a", "b"], [0, 1], [1.0, 2.0])
    got = fast(view, table, start=T0 + timedelta(days=1))
    assert got.num_rows == 0
    assert got.schema == output_schema(view)


def test_naive_start_is_utc() -> None:
    view = view_of(every_function())
    table = events(["a", "b", "a"], [0, 4, 8], [1.0, 2.0, 3.0])
    naive = (T0 + 4 * STEP).replace(tzinfo=None)
    assert_same(fast(view, table, naive), fast(view, table, T0 + 4 * STEP))
    assert fast(view, table, naive).num_rows == 2


def test_many_entities_over_centuries_take_entity_slices() -> None:
    # 2000 entities over 200 years: code * stride overflows int64, so the frames are
    # found one slice of entities at a time, and the output order by a lexsort.
    rng = np.random.default_rng(5)
    n = 6000
    years = rng.integers(0, 200 * 365 * 86_400, n)
    stamps = (np.datetime64("1900-01-01T00:00:00", "us") + years * 1_000_000).astype(np.int64)
    tied = np.arange(0, n - 1, 7)
    stamps[tied] = stamps[tied + 1]  # ties across entities
    table = pa.table(
        {
            "key": pa.array(rng.integers(0, 2000, n)),
            "ts": pa.array(stamps).cast(US_UTC),
            "amount": pa.array(rng.normal(size=n) * 100),
        }
    )
    view = view_of(every_function("amount", (timedelta(days=3650), timedelta(hours=1))))
    assert 2000 * 200 * 365 * 86_400 * 1_000_000 > 2**63
    assert_same(fast(view, table), compute_rolling_sql(view, table))


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("start_slot", [None, 0, 150, 400])
def test_big_tables_are_computed_in_time_pieces(
    monkeypatch: pytest.MonkeyPatch, shuffled: bool, start_slot: int | None
) -> None:
    monkeypatch.setattr(rolling, "PIECE_ROWS", 40)
    rng = np.random.default_rng(11)
    slots = np.concatenate([rng.integers(0, 300, 1000), np.full(130, 200)])  # a long instant
    table = events(
        [f"k{k}" for k in rng.integers(0, 25, slots.size)],
        list(slots),
        list(np.round(rng.normal(size=slots.size) * 100, 2)),
        created=pa.array([T0 + int(c) * STEP for c in rng.integers(0, 400, slots.size)], US_UTC),
    )
    view = view_of(
        every_function("amount", (STEP, timedelta(hours=2), timedelta(days=1))),
        created="created",
    )
    start = None if start_slot is None else T0 + start_slot * STEP
    want = compute_rolling_sql(view, table, start=start)
    if shuffled:
        table = table.take(rng.permutation(table.num_rows))
    got = fast(view, table, start)
    assert_same(got, want)
    assert got["amount"].num_chunks > 1 or got.num_rows == 0


def test_plain_features_only() -> None:
    view = view_of((), features=("amount", "qty"))
    table = events(
        ["b", "a", "b", "a"], [3, 3, 1, 9], [1.0, None, 2.5, -4.0], qty=pa.array([1, 2, None, 4])
    )
    got = fast(view, table)
    assert_same(got, compute_rolling_sql(view, table))
    assert got["key"].to_pylist() == ["b", "a", "b", "a"]


def test_a_missing_column_is_a_schema_error() -> None:
    view = view_of(every_function())
    table = events(["a"], [0], [1.0]).drop_columns(["amount"])
    with pytest.raises(SchemaError, match="amount"):
        compute_rolling(view, table)
