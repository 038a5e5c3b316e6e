"""Point-in-time joins never look into the future nor past the TTL (property-tested)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops.errors import SchemaError
from mlops.features.definition import Aggregation, FeatureView
from mlops.features.pit import feature_timestamp_column, point_in_time_join

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
