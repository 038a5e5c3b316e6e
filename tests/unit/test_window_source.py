"""Materialization windows (whole UTC days) and reading raw events with clear errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from mlops.errors import DataError, SchemaError
from mlops.features.definition import Source
from mlops.features.materialize import plan
from mlops.features.source import read_events, to_utc, view_events
from mlops.features.window import Window, align

COLUMNS = ["card_id", "ts", "amount"]


# --- window ---------------------------------------------------------------------------
def test_window_days_and_str() -> None:
    window = Window(start=datetime(2024, 2, 28, tzinfo=UTC), end=datetime(2024, 3, 2, tzinfo=UTC))
    assert window.days == [date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)]
    assert str(window) == "2024-02-28T00:00:00+00:00/2024-03-02T00:00:00+00:00"
    one = Window(start=datetime(2024, 3, 1, tzinfo=UTC), end=datetime(2024, 3, 2, tzinfo=UTC))
    assert one.days == [date(2024, 3, 1)]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (
            "2024-03-01 13:45",
            "2024-03-02 00:00:01",
            (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)),
        ),
        (
            datetime(2024, 3, 1),  # naive = UTC, already midnight
            datetime(2024, 3, 2),
            (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)),
        ),
        (
            # 01:00 in UTC+2 is 23:00 the day before in UTC
            datetime(2024, 3, 2, 1, tzinfo=timezone(timedelta(hours=2))),
            "2024-03-02T01:00:00+02:00",
            (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)),
        ),
        (None, "2024-03-02 10:00", (None, datetime(2024, 3, 3, tzinfo=UTC))),
        ("2024-03-02 10:00", None, (datetime(2024, 3, 2, tzinfo=UTC), None)),
        (None, None, (None, None)),
    ],
)
def test_align(start, end, expected) -> None:
    lo, hi = align(start, end)
    assert (lo, hi) == expected
    for value in (lo, hi):
        if value is not None:
            assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-03-02", "2024-03-02"),
        ("2024-03-02", "2024-03-01"),
        ("2024-03-02 05:00", "2024-03-01"),
    ],
)
def test_align_rejects_empty_windows(start: str, end: str) -> None:
    with pytest.raises(DataError, match="empty window"):
        align(start, end)


def test_align_same_instant_inside_a_day_is_that_day() -> None:
    assert align("2024-03-02 05:00", "2024-03-02 05:00") == (
        datetime(2024, 3, 2, tzinfo=UTC),
        datetime(2024, 3, 3, tzinfo=UTC),
    )


def _source_with(tmp_path: Path, view_factory, stamps: list[str]):
    """A view over a Parquet source holding events at ``stamps``."""
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "card_id": ["c1"] * len(stamps),
            "ts": pd.to_datetime(stamps, utc=True),
            "amount": [1.0] * len(stamps),
        }
    ).to_parquet(path)
    return view_factory(source=Source(path=path))


def test_plan_uses_given_bounds(tmp_path: Path, view_factory) -> None:
    view = _source_with(tmp_path, view_factory, ["2024-01-01 10:00"])
    lo, hi = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    window = plan(view, start=lo, end=hi).window
    assert (window.start, window.end) == (lo, hi)
    assert len(window.days) == 3


def test_plan_window_from_data(tmp_path: Path, view_factory) -> None:
    view = _source_with(
        tmp_path, view_factory, ["2024-03-02 10:00", "2024-03-01 23:59", "2024-03-04 00:00"]
    )
    window = plan(view).window
    assert window.start == datetime(2024, 3, 1, tzinfo=UTC)
    assert window.end == datetime(2024, 3, 5, tzinfo=UTC)  # the last event's day included
    assert window.days == [date(2024, 3, d) for d in (1, 2, 3, 4)]
    half = plan(view, start=datetime(2024, 3, 2, tzinfo=UTC)).window
    assert (half.start, half.end) == (datetime(2024, 3, 2, tzinfo=UTC), window.end)


def test_plan_without_data_or_bounds(tmp_path: Path, view_factory) -> None:
    view = _source_with(tmp_path, view_factory, [])
    with pytest.raises(DataError, match="no events"):
        plan(view)


def test_to_utc() -> None:
    assert to_utc("2024-03-01 10:00") == pd.Timestamp("2024-03-01 10:00", tz="UTC")
    assert to_utc("2024-03-01T12:00+02:00") == pd.Timestamp("2024-03-01 10:00", tz="UTC")
    assert str(to_utc(datetime(2024, 3, 1)).tz) == "UTC"


# --- source ---------------------------------------------------------------------------
def events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "card_id": [1, 2, 1, 3],
            "ts": pd.to_datetime(
                ["2024-03-01 10:00", "2024-03-01 12:00", "2024-03-02 00:00", "2024-03-03 08:00"],
                utc=True,
            ),
            "amount": [1.5, 2.5, 3.5, 4.5],
            "extra": ["a", "b", "c", "d"],
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Source:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return Source.from_path(path)


@pytest.fixture(params=["csv", "parquet"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    frame = events()
    if request.param == "csv":
        frame = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    source = write(frame, tmp_path / f"events.{request.param}")
    assert source.format == request.param
    return source


def test_read_events(source: Source) -> None:
    got = read_events(source, columns=COLUMNS, timestamp="ts")
    assert list(got.columns) == COLUMNS
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"
    assert got["ts"].tolist() == events()["ts"].tolist()
    assert got["amount"].tolist() == [1.5, 2.5, 3.5, 4.5]
    assert got["card_id"].tolist() == [1, 2, 1, 3]


def test_read_events_half_open_range(source: Source) -> None:
    got = read_events(
        source,
        columns=COLUMNS,
        timestamp="ts",
        start=datetime(2024, 3, 1, 12, tzinfo=UTC),
        end=datetime(2024, 3, 3, 8),  # naive = UTC; excluded
    )
    assert got["amount"].tolist() == [2.5, 3.5]
    assert got.index.tolist() == [0, 1]


def test_missing_file_names_it(tmp_path: Path) -> None:
    for name in ("nope.csv", "nope.parquet"):
        path = tmp_path / name
        with pytest.raises(DataError, match="does not exist") as info:
            read_events(Source.from_path(path), columns=COLUMNS, timestamp="ts")
        assert str(path) in str(info.value)


def test_missing_column_names_it(source: Source) -> None:
    with pytest.raises(SchemaError) as info:
        read_events(source, columns=[*COLUMNS, "merchant_id"], timestamp="ts")
    assert "merchant_id" in str(info.value)
    assert str(source.path) in str(info.value)


@pytest.mark.filterwarnings("ignore:Could not infer format")
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_non_timestamp_column(tmp_path: Path, fmt: str) -> None:
    frame = events().assign(ts=["yesterday", "today", "soon", "later"])
    source = write(frame, tmp_path / f"bad.{fmt}")
    with pytest.raises(SchemaError, match="'ts' is not a timestamp"):
        read_events(source, columns=COLUMNS, timestamp="ts")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_numeric_timestamp_column_is_not_a_timestamp(tmp_path: Path, fmt: str) -> None:
    """Numbers would otherwise be read as nanoseconds after 1970, silently."""
    frame = events().assign(ts=[1_709_287_200, 1_709_294_400, 1_709_337_600, 1_709_453_000])
    source = write(frame, tmp_path / f"epoch.{fmt}")
    with pytest.raises(SchemaError, match="'ts' is not a timestamp"):
        read_events(source, columns=COLUMNS, timestamp="ts")


def test_empty_timestamp_column(tmp_path: Path) -> None:
    path = tmp_path / "empty_ts.parquet"
    events().assign(ts=pd.Series([None] * 4, dtype=object)).to_parquet(path, index=False)
    with pytest.raises(SchemaError, match="'ts'"):
        read_events(Source.from_path(path), columns=COLUMNS, timestamp="ts")


def test_unreadable_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"\x00\x01 definitely not parquet")
    with pytest.raises(DataError, match="cannot read parquet source") as info:
        read_events(Source.from_path(path), columns=COLUMNS, timestamp="ts")
    assert str(path) in str(info.value)


def test_parquet_folder(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    frame = events()
    frame.iloc[:2].to_parquet(folder / "a.parquet", index=False)
    frame.iloc[2:].to_parquet(folder / "b.parquet", index=False)
    got = read_events(Source.from_path(folder), columns=COLUMNS, timestamp="ts")
    assert sorted(got["amount"]) == [1.5, 2.5, 3.5, 4.5]


def test_view_events_reads_the_look_back(tmp_path: Path, view_factory) -> None:
    path = tmp_path / "events.parquet"
    events().to_parquet(path, index=False)
    view = view_factory(source=Source.from_path(path))  # longest window 24 h
    got = view_events(view, start=datetime(2024, 3, 2, 10, tzinfo=UTC))
    # 2024-03-01 10:00 is exactly 24 h before start: part of the look-back
    assert got["amount"].tolist() == [1.5, 2.5, 3.5, 4.5]
    later = view_events(view, start=datetime(2024, 3, 2, 10, 1, tzinfo=UTC))
    assert later["amount"].tolist() == [2.5, 3.5, 4.5]
    assert list(got.columns) == view.source_columns
