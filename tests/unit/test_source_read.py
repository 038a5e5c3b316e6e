"""The two readers of a view's source give the same events and the same day counts.

A single Parquet file with µs/ns timestamps is read by Arrow (``_read_chunk_arrow``);
everything else by DuckDB (``_read_chunk_duckdb``). Materialized bytes must not depend
on which one ran, so each case here reads the same file both ways.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops.features import materialize
from mlops.features.definition import Aggregation, FeatureView, Source
from mlops.features.source import to_utc

DAY = timedelta(days=1)
T0 = datetime(2024, 3, 1, tzinfo=UTC)
NS = 1_000_000_000


def view_for(path: Path, *, created: bool = False) -> FeatureView:
    return FeatureView(
        name="v",
        entity="key",
        timestamp="ts",
        source=Source.from_path(path),
        features=("amount",),
        aggregations=(Aggregation("amount", "sum", timedelta(hours=1), name="s"),),
        created_timestamp="created" if created else None,
    )


def stamps_ns(*offsets_ns: int) -> list[int]:
    base = int(T0.timestamp()) * NS
    return [base + o for o in offsets_ns]


def both_ways(view: FeatureView, lo: datetime, hi: datetime) -> tuple[pa.Table, pa.Table]:
    dataset = materialize._arrow_source(view)
    assert dataset is not None, "this file should take Arrow's path"
    arrow = materialize._read_chunk_arrow(view, dataset, to_utc(lo), to_utc(hi))
    duck = materialize._read_chunk_duckdb(view, to_utc(lo), to_utc(hi))
    return arrow, duck


def assert_same_rows(arrow: pa.Table, duck: pa.Table) -> None:
    assert arrow.schema == duck.schema
    order = [("ts", "ascending"), ("key", "ascending")]
    assert arrow.sort_by(order).equals(duck.sort_by(order))


def test_ns_times_with_sub_microsecond_digits_at_the_bounds(tmp_path: Path) -> None:
    # Rows just either side of each bound, by less than a microsecond.
    day_ns = 86_400 * NS
    offsets = [-1, 0, 999, 1_000, day_ns - 1, day_ns, day_ns + 500, 2 * day_ns - 1, 3 * day_ns]
    table = pa.table(
        {
            "key": pa.array([f"k{i % 3}" for i in range(len(offsets))]),
            "ts": pa.array(stamps_ns(*offsets), type=pa.timestamp("ns", "UTC")),
            "amount": pa.array([float(i) for i in range(len(offsets))]),
        }
    )
    path = tmp_path / "ns.parquet"
    pq.write_table(table, path)
    view = view_for(path)

    arrow, duck = both_ways(view, T0 + DAY, T0 + 2 * DAY)

    assert_same_rows(arrow, duck)
    assert arrow.schema.field("ts").type == pa.timestamp("us", "UTC")
    # Rounded to the nearest µs as DuckDB does: day_ns - 1, day_ns and day_ns + 500 fall
    # on the day, 2 * day_ns - 1 rounds to the next one.
    assert arrow["amount"].to_pylist() == [4.0, 5.0, 6.0]
    assert materialize.events_per_day(view) == materialize._events_per_day_duckdb(view)


def test_naive_times_dictionary_keys_nulls_and_a_created_column(tmp_path: Path) -> None:
    n = 50
    naive = [T0.replace(tzinfo=None) + timedelta(hours=7 * i) for i in range(n)]
    keys = pa.array([None if i == 4 else f"card-{i % 7}" for i in range(n)]).dictionary_encode()
    table = pa.table(
        {
            "key": keys,
            "ts": pa.array(
                [None if i == 9 else t for i, t in enumerate(naive)], pa.timestamp("us")
            ),
            "amount": pa.array([None if i % 5 == 0 else i * 0.5 for i in range(n)]),
            "created": pa.array(
                [t + timedelta(minutes=3) for t in naive], type=pa.timestamp("ns", "Asia/Tokyo")
            ),
            "other": pa.array(range(n)),
        }
    )
    path = tmp_path / "naive.parquet"
    pq.write_table(table, path)
    view = view_for(path, created=True)

    arrow, duck = both_ways(view, T0 + DAY, T0 + 8 * DAY)

    assert_same_rows(arrow, duck)
    assert arrow.column_names == ["key", "ts", "amount", "created"]
    assert arrow["key"].type == pa.string()
    counts = materialize.events_per_day(view)
    assert counts == materialize._events_per_day_duckdb(view)
    assert sum(counts.values()) == n - 1  # the null time counts on no day


def test_sources_arrow_does_not_read_go_to_duckdb(tmp_path: Path) -> None:
    text_times = pa.table(
        {"key": ["a"], "ts": ["2024-03-01 10:00:00"], "amount": [1.0]},
    )
    seconds = pa.table(
        {"key": ["a"], "ts": pa.array([T0], pa.timestamp("s", "UTC")), "amount": [1.0]},
    )
    for name, table in {"text": text_times, "seconds": seconds}.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        assert materialize._arrow_source(view_for(path)) is None, name
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(seconds, folder / "part.parquet")
    assert materialize._arrow_source(view_for(folder)) is None
    csv = tmp_path / "events.csv"
    csv.write_text("key,ts,amount\na,2024-03-01T10:00:00Z,1.0\n")
    view = view_for(csv)
    assert materialize._arrow_source(view) is None
    chunk = materialize.Chunk(start=T0, end=T0 + DAY)
    assert materialize.read_chunk_events(view, chunk).num_rows == 1


def test_a_file_arrow_cannot_open_is_left_to_duckdbs_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    view = view_for(path)
    assert materialize._arrow_source(view) is None
    with pytest.raises(materialize.DataError, match=r"broken\.parquet"):
        materialize.events_per_day(view)


def test_ns_rounding_is_duckdbs_on_both_sides_of_1970() -> None:
    ns = pa.array([-1500, -500, -499, -1, 0, 499, 500, 1500, 2500, None], pa.timestamp("ns", "UTC"))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("t", pa.table({"ts": ns}))
        want = con.execute("SELECT epoch_us(CAST(ts AS TIMESTAMPTZ)) FROM t").fetchall()
    finally:
        con.close()
    got = materialize._round_to_micros(pa.chunked_array([ns])).cast(pa.int64()).to_pylist()
    assert got == [row[0] for row in want]
    assert got[:4] == [-2, -1, 0, 0] and got[-1] is None
