"""The Parquet offline store: roundtrip, whole-day replacement, errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops.errors import FeatureStoreError
from mlops.features.compute import compute_features
from mlops.features.definition import FeatureView
from mlops.features.offline import PART_FILE, OfflineStore

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def rows_for(stamps: list[str], amounts: list[float] | None = None) -> pd.DataFrame:
    """Feature rows shaped like compute_features' output (text key, UTC µs time)."""
    n = len(stamps)
    return pd.DataFrame(
        {
            "card_id": [f"c{i % 3}" for i in range(n)],
            "ts": pd.to_datetime(stamps, utc=True, format="ISO8601").astype("datetime64[us, UTC]"),
            "amount": amounts if amounts is not None else [float(i) for i in range(n)],
            "events_count_1h": [1.0] * n,
            "amount_mean_24h": [2.0] * n,
        }
    )


@pytest.fixture
def view(view_factory) -> FeatureView:
    return view_factory()


@pytest.fixture
def store(tmp_path: Path) -> OfflineStore:
    return OfflineStore(tmp_path / "offline")


def sort(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["ts", "card_id", "amount"]).reset_index(drop=True)


def test_roundtrip(store: OfflineStore, view: FeatureView) -> None:
    rows = rows_for(["2024-03-01 00:00", "2024-03-01 23:59:59", "2024-03-02 12:00"])
    written = store.write(view, rows, [D1, D2])
    assert written == [store.partition_path(view, D1), store.partition_path(view, D2)]
    assert written[0] == store.root / "card_tx" / view.version / "date=2024-03-01" / PART_FILE
    assert store.days(view) == [D1, D2]
    got = store.read(view)
    pd.testing.assert_frame_equal(sort(got), sort(rows))
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"


def test_rewrite_replaces_days(store: OfflineStore, view: FeatureView) -> None:
    first = rows_for(["2024-03-01 01:00", "2024-03-02 01:00"], [1.0, 2.0])
    store.write(view, first, [D1, D2])
    store.write(view, first, [D1, D2])  # the same run again
    assert len(store.read(view)) == 2

    second = rows_for(["2024-03-02 05:00", "2024-03-02 06:00"], [20.0, 21.0])
    store.write(view, second, [D2])  # only day 2 is replaced
    got = sort(store.read(view))
    assert got["amount"].tolist() == [1.0, 20.0, 21.0]


def test_empty_day_reads_back_as_no_rows(store: OfflineStore, view: FeatureView) -> None:
    store.write(view, rows_for(["2024-03-01 01:00", "2024-03-02 01:00"]), [D1, D2])
    # day 2 rematerialized from a source that no longer has events on it
    store.write(view, rows_for(["2024-03-01 01:00"]), [D1, D2])
    assert store.days(view) == [D1, D2]
    assert store.partition_path(view, D2).exists()
    assert store.read(view)["ts"].dt.date.tolist() == [D1]
    only_d2 = store.read(
        view, start=datetime(2024, 3, 2, tzinfo=UTC), end=datetime(2024, 3, 3, tzinfo=UTC)
    )
    assert only_d2.empty
    assert list(only_d2.columns) == list(rows_for([]).columns)


def test_empty_frame_written_alone_reads_with_other_days(
    store: OfflineStore, view: FeatureView
) -> None:
    """A run over days without events writes from an empty frame (its text key column
    has no values to infer a type from); the view must still read as one table."""
    events = pd.DataFrame(
        {
            "card_id": [1, 2],
            "ts": pd.to_datetime(["2024-03-01 10:00", "2024-03-02 10:00"], utc=True),
            "amount": [3.0, 4.0],
        }
    )
    full = compute_features(view, events)
    store.write(view, full, [D1, D2])
    empty = compute_features(
        view, events, start=datetime(2024, 3, 3, tzinfo=UTC), end=datetime(2024, 3, 4, tzinfo=UTC)
    )
    assert empty.empty
    store.write(view, empty, [D3])

    got = store.read(view)
    assert got["card_id"].tolist() == ["1", "2"]
    assert store.days(view) == [D1, D2, D3]
    assert pq.read_schema(store.partition_path(view, D3)).field("card_id").type == pa.string()


def test_reads_a_null_typed_partition_written_earlier(
    store: OfflineStore, view: FeatureView
) -> None:
    store.write(view, rows_for(["2024-03-01 01:00"]), [D1])
    legacy = pa.Table.from_pandas(rows_for([]).astype({"card_id": object}), preserve_index=False)
    legacy = legacy.set_column(0, "card_id", pa.nulls(0))
    path = store.partition_path(view, D2)
    path.parent.mkdir(parents=True)
    pq.write_table(legacy, path)
    assert len(store.read(view)) == 1


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (None, None, ["03-01 00:00", "03-01 12:00", "03-02 00:00", "03-02 18:00", "03-03 06:00"]),
        ("2024-03-01 12:00", None, ["03-01 12:00", "03-02 00:00", "03-02 18:00", "03-03 06:00"]),
        (None, "2024-03-02 00:00", ["03-01 00:00", "03-01 12:00"]),
        ("2024-03-01 12:00", "2024-03-02 18:00", ["03-01 12:00", "03-02 00:00"]),
        ("2024-03-02 00:00", "2024-03-02 00:00:01", ["03-02 00:00"]),
    ],
)
def test_read_range_is_half_open(
    store: OfflineStore, view: FeatureView, start: str | None, end: str | None, expected: list
) -> None:
    stamps = [
        "2024-03-01 00:00",
        "2024-03-01 12:00",
        "2024-03-02 00:00",
        "2024-03-02 18:00",
        "2024-03-03 06:00",
    ]
    store.write(view, rows_for(stamps), [D1, D2, D3])
    got = store.read(
        view,
        start=None if start is None else pd.Timestamp(start, tz="UTC").to_pydatetime(),
        end=None if end is None else pd.Timestamp(end).to_pydatetime(),  # naive = UTC
    )
    assert got["ts"].dt.strftime("%m-%d %H:%M").tolist() == expected


def test_no_tmp_files_left(store: OfflineStore, view: FeatureView) -> None:
    rows = rows_for(["2024-03-01 01:00", "2024-03-02 01:00"])
    for _ in range(3):
        store.write(view, rows, [D1, D2, D3])
    files = sorted(
        p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
    )
    assert files == [
        f"card_tx/{view.version}/date=2024-03-01/part.parquet",
        f"card_tx/{view.version}/date=2024-03-02/part.parquet",
        f"card_tx/{view.version}/date=2024-03-03/part.parquet",
    ]


def test_failed_write_leaves_old_partition_and_no_tmp(
    store: OfflineStore, view: FeatureView, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(view, rows_for(["2024-03-01 01:00"], [1.0]), [D1])

    def broken(table: pa.Table, where: Path, **_: object) -> None:
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write(view, rows_for(["2024-03-01 02:00"], [2.0]), [D1])
    monkeypatch.undo()
    assert store.read(view)["amount"].tolist() == [1.0]
    assert not list(store.root.rglob("*.tmp"))


def test_corrupt_partition_names_the_file(store: OfflineStore, view: FeatureView) -> None:
    store.write(view, rows_for(["2024-03-01 01:00", "2024-03-02 01:00"]), [D1, D2])
    bad = store.partition_path(view, D2)
    bad.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(FeatureStoreError) as info:
        store.read(view)
    assert str(bad) in str(info.value)
    assert "corrupt" in str(info.value)
    # a range that does not touch the bad day still reads
    assert len(store.read(view, end=datetime(2024, 3, 1, 12, tzinfo=UTC))) == 1


def test_unmaterialized_view_says_to_materialize(store: OfflineStore, view: FeatureView) -> None:
    assert store.days(view) == []
    with pytest.raises(FeatureStoreError, match="materialize") as info:
        store.read(view)
    assert view.ref in str(info.value)
    assert f"mlops materialize {view.name}" in str(info.value)


def test_other_version_is_not_materialized(
    store: OfflineStore, view: FeatureView, view_factory
) -> None:
    store.write(view, rows_for(["2024-03-01 01:00"]), [D1])
    changed = view_factory(ttl=timedelta(days=30))
    assert changed.version != view.version
    with pytest.raises(FeatureStoreError, match="materialize"):
        store.read(changed)


def test_range_outside_materialized_days(store: OfflineStore, view: FeatureView) -> None:
    store.write(view, rows_for(["2024-03-01 01:00"]), [D1])
    with pytest.raises(FeatureStoreError, match="materialize"):
        store.read(view, start=datetime(2024, 4, 1, tzinfo=UTC))


def test_days_ignores_folders_without_a_part_file(store: OfflineStore, view: FeatureView) -> None:
    store.write(view, rows_for(["2024-03-01 01:00"]), [D1])
    (store.view_dir(view) / "date=2024-03-05").mkdir()
    assert store.days(view) == [D1]
