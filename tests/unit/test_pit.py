"""Point-in-time joins never look into the future nor past the TTL (property-tested)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops.errors import DataError, FeatureStoreError, SchemaError
from mlops.features.definition import Aggregation, FeatureView
from mlops.features.offline import OfflineStore
from mlops.features.pit import (
    feature_timestamp_column,
    historical_features,
    point_in_time_join,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)


def views(view_factory) -> tuple[FeatureView, FeatureView]:
    short = view_factory(
        name="recent",
        features=("amount",),
        aggregations=(),
        ttl=timedelta(hours=2),
    )
    long = view_factory(
        name="daily",
        features=(),
        aggregations=(Aggregation("amount", "sum", timedelta(hours=24), name="spend_24h"),),
        ttl=timedelta(days=1),
    )
    return short, long


def feature_rows(view: FeatureView, rows: list[tuple[int, int]], offset: float) -> pd.DataFrame:
    """Offline-store-like rows: text keys, UTC µs timestamps, unique feature values."""
    (name,) = view.feature_names
    return pd.DataFrame(
        {
            "card_id": [str(e) for e, _ in rows],
            "ts": pd.to_datetime([T0 + s * STEP for _, s in rows], utc=True).astype(
                "datetime64[us, UTC]"
            ),
            name: [offset + i for i in range(len(rows))],
        }
    )


def brute_force(
    label_entity: int, label_ts: pd.Timestamp, view: FeatureView, rows: pd.DataFrame
) -> tuple[pd.Timestamp | None, set[float]]:
    """The newest eligible feature timestamp and the values of the rows that carry it."""
    (name,) = view.feature_names
    eligible = rows[
        (rows["card_id"] == str(label_entity))
        & (rows["ts"] <= label_ts)
        & (rows["ts"] >= label_ts - view.ttl)
    ]
    if eligible.empty:
        return None, set()
    newest = eligible["ts"].max()
    return newest, set(eligible.loc[eligible["ts"] == newest, name])


entity_slots = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4 * 48)), max_size=30)


@settings(max_examples=50, deadline=None, database=None)
@given(
    label_rows=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4 * 48)), min_size=1, max_size=25
    ),
    short_rows=entity_slots,
    long_rows=entity_slots,
)
def test_point_in_time_property(
    view_factory,
    label_rows: list[tuple[int, int]],
    short_rows: list[tuple[int, int]],
    long_rows: list[tuple[int, int]],
) -> None:
    short, long = views(view_factory)
    short_frame = feature_rows(short, short_rows, offset=0.0)
    long_frame = feature_rows(long, long_rows, offset=10_000.0)
    labels = pd.DataFrame(
        {
            "card_id": [e for e, _ in label_rows],  # int keys; the features have text keys
            "event_timestamp": [T0 + s * STEP for _, s in label_rows],
            "label_id": range(len(label_rows)),
            "is_fraud": [i % 2 for i in range(len(label_rows))],
        }
    )

    joined = point_in_time_join(
        labels,
        entity="card_id",
        timestamp="event_timestamp",
        views=[(short, short_frame), (long, long_frame)],
    )

    # the labels, in their order, none lost or duplicated
    assert joined["label_id"].tolist() == list(range(len(label_rows)))
    assert joined["is_fraud"].tolist() == labels["is_fraud"].tolist()
    assert joined["card_id"].tolist() == [str(e) for e, _ in label_rows]

    for view, rows in ((short, short_frame), (long, long_frame)):
        (name,) = view.feature_names
        fts_col = feature_timestamp_column(view)
        for label, row in zip(label_rows, joined.itertuples(index=False), strict=True):
            label_ts = pd.Timestamp(T0 + label[1] * STEP)
            got = row._asdict()
            fts, value = got[fts_col], got[name]
            newest, values = brute_force(label[0], label_ts, view, rows)
            if newest is None:
                assert pd.isna(fts)
                assert math.isnan(value)
                continue
            assert fts <= label_ts, "a feature from the future was used"
            assert fts >= label_ts - view.ttl, "a feature older than the TTL was used"
            assert fts == newest, "not the newest eligible row"
            assert value in values


def test_missing_features_are_nan(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=(), ttl=timedelta(hours=1))
    rows = pd.DataFrame(
        {
            "card_id": ["a", "a"],
            "ts": pd.to_datetime(["2024-03-01 10:00", "2024-03-01 12:00"], utc=True),
            "amount": [1.0, 2.0],
        }
    )
    labels = pd.DataFrame(
        {
            "card_id": ["a", "a", "a", "b", "a", "a"],
            "ts": pd.to_datetime(
                [
                    "2024-03-01 09:59",  # before any feature row
                    "2024-03-01 11:00",  # 10:00 is exactly ttl old: still used
                    "2024-03-01 11:01",  # 10:00 is older than ttl
                    "2024-03-01 12:00",  # no rows for this entity
                    "2024-03-01 12:00",  # exact match
                    "2024-03-01 11:30",  # 12:00 is in the future
                ],
                utc=True,
            ),
        }
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    amounts = joined["amount"].tolist()
    assert math.isnan(amounts[0])
    assert amounts[1] == 1.0
    assert math.isnan(amounts[2])
    assert math.isnan(amounts[3])
    assert amounts[4] == 2.0
    assert math.isnan(amounts[5])
    assert joined["v__feature_timestamp"].isna().tolist() == [
        True,
        False,
        True,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("label_keys", "feature_keys"),
    [([1, 2], ["1", "2"]), (["1", "2"], [1, 2]), ([1, 2], [1, 2]), (["1", "2"], ["1", "2"])],
)
def test_int_and_text_keys_join(view_factory, label_keys: list, feature_keys: list) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    rows = pd.DataFrame(
        {
            "card_id": feature_keys,
            "ts": pd.to_datetime(["2024-03-01", "2024-03-01"], utc=True),
            "amount": [10.0, 20.0],
        }
    )
    labels = pd.DataFrame(
        {"card_id": label_keys[::-1], "ts": pd.to_datetime(["2024-03-02", "2024-03-02"], utc=True)}
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert joined["amount"].tolist() == [20.0, 10.0]
    assert joined["card_id"].tolist() == ["2", "1"]


def test_views_with_other_column_names(view_factory) -> None:
    """A view's own entity / timestamp names are mapped onto the labels' ones."""
    view = view_factory(
        name="acct",
        entity="account",
        timestamp="event_time",
        features=("balance",),
        aggregations=(),
    )
    rows = pd.DataFrame(
        {
            "account": ["x"],
            "event_time": pd.to_datetime(["2024-03-01 00:00"], utc=True),
            "balance": [5.0],
            "unrelated": [1],
        }
    )
    labels = pd.DataFrame(
        {"card_id": ["x"], "ts": pd.to_datetime(["2024-03-01 06:00"]), "y": [1]}  # naive = UTC
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert list(joined.columns) == ["card_id", "ts", "y", "acct__feature_timestamp", "balance"]
    assert joined["balance"].tolist() == [5.0]
    assert joined["ts"].tolist() == [pd.Timestamp("2024-03-01 06:00Z")]
    assert joined["acct__feature_timestamp"].tolist() == [pd.Timestamp("2024-03-01 00:00Z")]


def test_labels_keep_their_order_and_index_is_reset(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    rows = pd.DataFrame(
        {"card_id": ["a"], "ts": pd.to_datetime(["2024-03-01"], utc=True), "amount": [1.0]}
    )
    stamps = pd.to_datetime(["2024-03-05", "2024-03-02", "2024-02-01", "2024-03-03"], utc=True)
    labels = pd.DataFrame({"card_id": ["a"] * 4, "ts": stamps}, index=[40, 10, 30, 20])
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert joined["ts"].tolist() == list(stamps)
    assert joined.index.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(joined["amount"].isna(), [False, False, True, False])


@pytest.mark.parametrize("missing", ["card_id", "ts"])
def test_labels_without_key_columns(view_factory, missing: str) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    labels = pd.DataFrame({"card_id": ["a"], "ts": pd.to_datetime(["2024-03-01"], utc=True)})
    with pytest.raises(SchemaError, match=repr(missing)):
        point_in_time_join(
            labels.drop(columns=[missing]), entity="card_id", timestamp="ts", views=[(view, labels)]
        )


# --- more views, TTLs, late data, ties, offline store -------------------------------------
def at(*stamps: str) -> pd.Series:
    return pd.Series(
        pd.to_datetime(list(stamps), utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    )


def late_view(view_factory, **overrides) -> FeatureView:
    fields = {
        "name": "late",
        "features": ("amount",),
        "aggregations": (),
        "ttl": timedelta(days=1),
        "created_timestamp": "created",
        **overrides,
    }
    return view_factory(**fields)


def test_views_with_different_ttls(view_factory) -> None:
    short = view_factory(name="short", features=("a",), aggregations=(), ttl=timedelta(hours=1))
    long = view_factory(name="long", features=("b",), aggregations=(), ttl=timedelta(days=2))
    short_rows = pd.DataFrame({"card_id": ["x"], "ts": at("2024-03-01 10:00"), "a": [1.0]})
    long_rows = pd.DataFrame({"card_id": ["x"], "ts": at("2024-03-01 10:00"), "b": [2.0]})
    labels = pd.DataFrame(
        {"card_id": ["x", "x", "x"], "ts": at("2024-03-01 10:30", "2024-03-01 12:00", "2024-03-04")}
    )
    joined = point_in_time_join(
        labels,
        entity="card_id",
        timestamp="ts",
        views=[(short, short_rows), (long, long_rows)],
    )
    assert list(joined.columns) == [
        "card_id",
        "ts",
        "short__feature_timestamp",
        "a",
        "long__feature_timestamp",
        "b",
    ]
    np.testing.assert_array_equal(joined["a"], [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(joined["b"], [2.0, 2.0, np.nan])
    assert joined["long__feature_timestamp"].isna().tolist() == [False, False, True]


def test_row_created_after_the_label_is_not_used(view_factory) -> None:
    """A late row (event 10:00, arrived 13:00) is unknown at 12:00: the 09:00 row counts."""
    view = late_view(view_factory)
    rows = pd.DataFrame(
        {
            "card_id": ["a", "a"],
            "ts": at("2024-03-01 09:00", "2024-03-01 10:00"),
            "created": at("2024-03-01 09:01", "2024-03-01 13:00"),
            "amount": [1.0, 2.0],
        }
    )
    labels = pd.DataFrame(
        {
            "card_id": ["a", "a", "a"],
            # the last one: after row 1 happened, before it arrived
            "ts": at("2024-03-01 12:00", "2024-03-01 13:00", "2024-03-01 09:00:30"),
        }
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    np.testing.assert_array_equal(joined["amount"], [1.0, 2.0, np.nan])
    assert joined["late__feature_timestamp"].tolist()[:2] == [
        pd.Timestamp("2024-03-01 09:00Z"),
        pd.Timestamp("2024-03-01 10:00Z"),
    ]


def test_late_row_within_ttl_once_it_arrived(view_factory) -> None:
    """Arrival does not move the TTL: it runs from the event time."""
    view = late_view(view_factory, ttl=timedelta(hours=2))
    rows = pd.DataFrame(
        {
            "card_id": ["a"],
            "ts": at("2024-03-01 10:00"),
            "created": at("2024-03-01 11:00"),
            "amount": [5.0],
        }
    )
    labels = pd.DataFrame(
        {"card_id": ["a"] * 3, "ts": at("2024-03-01 10:30", "2024-03-01 11:30", "2024-03-01 12:30")}
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    np.testing.assert_array_equal(joined["amount"], [np.nan, 5.0, np.nan])


def test_ties_go_to_the_later_row(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    rows = pd.DataFrame(
        {"card_id": ["a", "a", "a"], "ts": at(*["2024-03-01 10:00"] * 3), "amount": [1.0, 2.0, 3.0]}
    )
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01 10:00")})
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert joined["amount"].tolist() == [3.0]


def test_ties_go_to_the_latest_created_then_the_later_row(view_factory) -> None:
    view = late_view(view_factory)
    rows = pd.DataFrame(
        {
            "card_id": ["a"] * 4,
            "ts": at(*["2024-03-01 10:00"] * 4),
            "created": at(
                "2024-03-01 10:05", "2024-03-01 10:30", "2024-03-01 10:30", "2024-03-01 11:00"
            ),
            "amount": [1.0, 2.0, 3.0, 4.0],
        }
    )
    labels = pd.DataFrame(
        {
            "card_id": ["a"] * 4,
            "ts": at(
                "2024-03-01 10:00", "2024-03-01 10:10", "2024-03-01 10:45", "2024-03-01 11:00"
            ),
        }
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    np.testing.assert_array_equal(joined["amount"], [np.nan, 1.0, 3.0, 4.0])


def test_rows_without_created_time_count_from_their_event_time(view_factory) -> None:
    view = late_view(view_factory)
    rows = pd.DataFrame(
        {
            "card_id": ["a"],
            "ts": at("2024-03-01 10:00"),
            "created": pd.Series([pd.NaT], dtype="datetime64[us, UTC]"),
            "amount": [1.0],
        }
    )
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01 10:00")})
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert joined["amount"].tolist() == [1.0]


def test_labels_without_entity_or_time_get_nothing(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    rows = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01"), "amount": [1.0]})
    labels = pd.DataFrame(
        {
            "card_id": ["a", None, "a"],
            "ts": [pd.Timestamp("2024-03-02T00:00Z"), pd.Timestamp("2024-03-02T00:00Z"), None],
        }
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    np.testing.assert_array_equal(joined["amount"], [1.0, np.nan, np.nan])
    assert joined["card_id"].tolist() == ["a", None, "a"]


def test_ttl_is_exact_below_a_microsecond(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=(), ttl=timedelta(hours=1))
    rows = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01 10:00"), "amount": [1.0]})
    labels = pd.DataFrame(
        {
            "card_id": ["a", "a", "a"],
            "ts": pd.to_datetime(
                [
                    "2024-03-01 11:00:00.000000000",
                    "2024-03-01 11:00:00.000000001",  # 1 ns past the TTL
                    "2024-03-01 09:59:59.999999999",  # 1 ns before the row
                ],
                utc=True,
            ),
        }
    )
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    np.testing.assert_array_equal(joined["amount"], [1.0, np.nan, np.nan])


def test_clashing_feature_names(view_factory) -> None:
    one = view_factory(name="one", features=("amount",), aggregations=())
    two = view_factory(name="two", features=("amount",), aggregations=())
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01")})
    rows = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-01"), "amount": [1.0]})
    with pytest.raises(SchemaError, match="'amount' of view 'two' clashes with view 'one'"):
        point_in_time_join(
            labels, entity="card_id", timestamp="ts", views=[(one, rows), (two, rows)]
        )
    with pytest.raises(SchemaError, match="clashes with the label rows"):
        point_in_time_join(
            labels.assign(amount=1), entity="card_id", timestamp="ts", views=[(one, rows)]
        )


@pytest.mark.parametrize("bad", [["not a time"], [1_700_000_000]])
def test_labels_with_bad_timestamps(view_factory, bad: list) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    labels = pd.DataFrame({"card_id": ["a"], "when": bad})
    with pytest.raises(SchemaError, match="'when'"):
        point_in_time_join(labels, entity="card_id", timestamp="when", views=[(view, labels)])


# --- historical_features: straight from the offline store ----------------------------------
D = [date(2024, 3, d) for d in range(1, 8)]


@pytest.fixture
def store(tmp_path: Path) -> OfflineStore:
    return OfflineStore(tmp_path / "offline")


def daily_rows(keys: list, start: int = 0) -> pd.DataFrame:
    """One row per day of ``D`` and key, at noon, with amount = 100 * day + key index."""
    stamps, entities, amounts = [], [], []
    for i, day in enumerate(D):
        for k, key in enumerate(keys):
            stamps.append(pd.Timestamp(day.isoformat() + " 12:00", tz="UTC"))
            entities.append(key)
            amounts.append(float(100 * (i + start) + k))
    return pd.DataFrame(
        {
            "card_id": entities,
            "ts": pd.Series(stamps).astype("datetime64[us, UTC]"),
            "amount": amounts,
        }
    )


@pytest.mark.parametrize(
    ("label_keys", "row_keys"),
    [(["a", "b"], ["a", "b"]), ([1, 2], ["1", "2"]), ([1, 2], [1, 2]), (["1", "2"], [1, 2])],
)
def test_historical_features_match_the_in_memory_join(
    view_factory, store: OfflineStore, label_keys: list, row_keys: list
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=(), ttl=timedelta(days=2))
    rows = daily_rows(row_keys)
    store.write(view, rows, D)
    labels = pd.DataFrame(
        {
            "card_id": [label_keys[0], label_keys[1], label_keys[0], label_keys[1]],
            "ts": at(
                "2024-03-03 11:00", "2024-03-05 12:00", "2024-03-01 11:59", "2024-03-09 13:00"
            ),
            "y": [1, 0, 1, 0],
        }
    )
    got = historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)
    expected = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    pd.testing.assert_frame_equal(got, expected)
    np.testing.assert_array_equal(got["amount"], [100.0, 401.0, np.nan, np.nan])


def test_historical_features_reads_only_the_days_that_matter(
    view_factory, store: OfflineStore, tmp_path: Path
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=(), ttl=timedelta(days=1))
    store.write(view, daily_rows(["a"]), D)
    for day in (D[0], D[6]):  # outside [min label - ttl, max label]
        store.partition_path(view, day).write_bytes(b"not parquet")
    labels = pd.DataFrame({"card_id": ["a", "a"], "ts": at("2024-03-03 13:00", "2024-03-05 12:00")})
    path = tmp_path / "labels.parquet"
    labels.to_parquet(path)
    got = historical_features(path, entity="card_id", timestamp="ts", views=[view], offline=store)
    assert got["amount"].tolist() == [200.0, 400.0]


def test_historical_features_with_late_data_and_two_views(
    view_factory, store: OfflineStore
) -> None:
    late = late_view(view_factory, features=("late_amount",), ttl=timedelta(days=2))
    plain = view_factory(name="plain", features=("amount",), aggregations=(), ttl=timedelta(days=1))
    store.write(plain, daily_rows(["a"]), D)
    late_rows = pd.DataFrame(
        {
            "card_id": ["a", "a"],
            "ts": at("2024-03-02 09:00", "2024-03-03 10:00"),
            "created": at("2024-03-02 09:00", "2024-03-04 10:00"),  # a day late
            "late_amount": [1.0, 2.0],
        }
    )
    store.write(late, late_rows, D[:4])
    labels = pd.DataFrame({"card_id": ["a", "a"], "ts": at("2024-03-03 12:00", "2024-03-04 10:00")})
    got = historical_features(
        labels, entity="card_id", timestamp="ts", views=[plain, late], offline=store
    )
    assert got["amount"].tolist() == [200.0, 200.0]
    assert got["late_amount"].tolist() == [1.0, 2.0]


def test_historical_features_corrupt_partition_names_the_file(
    view_factory, store: OfflineStore
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    store.write(view, daily_rows(["a"]), D)
    bad = store.partition_path(view, D[3])
    bad.write_bytes(b"PAR1 garbage")
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-06")})
    with pytest.raises(FeatureStoreError, match=f"corrupt offline partition {bad}"):
        historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)


def test_historical_features_missing_partition_names_the_file(
    view_factory, store: OfflineStore
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    store.write(view, daily_rows(["a"]), D)
    gone = store.partition_path(view, D[2])
    gone.unlink()
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-06")})
    with pytest.raises(FeatureStoreError, match=f"missing offline partition {gone}"):
        historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)


def test_historical_features_partition_without_a_column(view_factory, store: OfflineStore) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    store.write(view, daily_rows(["a"]), D)
    path = store.partition_path(view, D[4])
    pq.write_table(pq.read_table(path).drop_columns(["amount"]), path)
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-06")})
    with pytest.raises(FeatureStoreError, match=f"{path} has no column.*amount"):
        historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)


def test_historical_features_of_a_view_never_materialized(
    view_factory, store: OfflineStore
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    labels = pd.DataFrame({"card_id": ["a"], "ts": at("2024-03-06")})
    with pytest.raises(FeatureStoreError, match="materialize the view first"):
        historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)


def test_historical_features_labels_errors(
    view_factory, store: OfflineStore, tmp_path: Path
) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    store.write(view, daily_rows(["a"]), D)
    labels = pd.DataFrame({"card_id": ["a"], "ts": ["yesterday-ish"]})
    with pytest.raises(SchemaError, match="'ts'"):
        historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)
    with pytest.raises(SchemaError, match="'user'"):
        historical_features(labels, entity="user", timestamp="ts", views=[view], offline=store)
    with pytest.raises(DataError, match="does not exist"):
        historical_features(
            tmp_path / "nope.parquet", entity="card_id", timestamp="ts", views=[view], offline=store
        )


def test_historical_features_across_partitions_of_other_schemas(
    view_factory, store: OfflineStore
) -> None:
    """Days written by other writers: ns or µs times, int or text keys, extra columns."""
    view = view_factory(name="v", features=("amount",), aggregations=(), ttl=timedelta(days=3))
    rows = daily_rows([1, 2])
    store.write(view, rows, D[:3])  # then days 2 and 3 are written again, otherwise
    day2 = rows[rows["ts"].dt.day == 2].astype({"ts": "datetime64[ns, UTC]"})
    pq.write_table(pa.Table.from_pandas(day2.assign(extra="x")), store.partition_path(view, D[1]))
    day3 = rows[rows["ts"].dt.day == 3].astype({"card_id": str})
    pq.write_table(pa.Table.from_pandas(day3), store.partition_path(view, D[2]))
    labels = pd.DataFrame(
        {
            "card_id": [2, 1, 2],
            "ts": at("2024-03-02 12:00:00.000001", "2024-03-03 11:00", "2024-03-03 12:00"),
        }
    )
    got = historical_features(labels, entity="card_id", timestamp="ts", views=[view], offline=store)
    assert got["amount"].tolist() == [101.0, 100.0, 201.0]
    assert got["v__feature_timestamp"].tolist() == [
        pd.Timestamp("2024-03-02 12:00Z"),
        pd.Timestamp("2024-03-02 12:00Z"),
        pd.Timestamp("2024-03-03 12:00Z"),
    ]


def test_frame_rows_with_nullable_int_keys(view_factory) -> None:
    view = view_factory(name="v", features=("amount",), aggregations=())
    rows = pd.DataFrame(
        {
            "card_id": pd.array([1, None, 2], dtype="Int64"),
            "ts": at("2024-03-01", "2024-03-01", "2024-03-01"),
            "amount": [1.0, 9.0, 2.0],
        }
    )
    labels = pd.DataFrame({"card_id": [2, 1], "ts": at("2024-03-02", "2024-03-02")})
    joined = point_in_time_join(labels, entity="card_id", timestamp="ts", views=[(view, rows)])
    assert joined["amount"].tolist() == [2.0, 1.0]
