"""compute_features (DuckDB RANGE windows) against a brute-force Python reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops.features.compute import compute_features, feature_sql
from mlops.features.definition import Aggregation, FeatureView

T0 = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)  # a coarse grid: many ties and events exactly at t - w
WINDOWS = (timedelta(hours=1), timedelta(hours=24))
FUNCTIONS = ("count", "sum", "mean", "min", "max")


def all_functions_view(view_factory) -> FeatureView:
    return view_factory(
        features=("amount",),
        aggregations=tuple(Aggregation("amount", fn, w) for w in WINDOWS for fn in FUNCTIONS),
    )


def events_frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(entity, grid slot, amount) tuples → an events table with UTC timestamps."""
    return pd.DataFrame(
        {
            "card_id": [e for e, _, _ in rows],
            "ts": pd.to_datetime([T0 + s * STEP for _, s, _ in rows], utc=True).astype(
                "datetime64[us, UTC]"
            ),
            "amount": [float(a) for _, _, a in rows],
        }
    )


def reference(view: FeatureView, events: pd.DataFrame) -> pd.DataFrame:
    """One row per event; each aggregate over the entity's events in [t - w, t]."""
    records = list(events.itertuples(index=False))
    out = []
    for row in records:
        result = {"card_id": str(row.card_id), "ts": row.ts, "amount": row.amount}
        for agg in view.aggregations:
            values = [
                other.amount
                for other in records
                if other.card_id == row.card_id and row.ts - agg.window <= other.ts <= row.ts
            ]
            result[agg.feature_name] = {
                "count": float(len(values)),
                "sum": float(sum(values)),
                "mean": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
            }[agg.function]
        out.append(result)
    return pd.DataFrame(out, columns=["card_id", "ts", *view.feature_names])


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame, view: FeatureView) -> None:
    """Same rows, whatever the order among rows of one entity at one instant."""
    keys = ["card_id", "ts", "amount"]
    assert list(got.columns) == ["card_id", "ts", *view.feature_names]
    assert len(got) == len(expected)
    got_sorted = got.sort_values(keys, kind="stable").reset_index(drop=True)
    exp_sorted = expected.sort_values(keys, kind="stable").reset_index(drop=True)
    assert got_sorted["card_id"].tolist() == exp_sorted["card_id"].tolist()
    assert (got_sorted["ts"] == exp_sorted["ts"]).all()
    for name in view.feature_names:
        np.testing.assert_allclose(
            got_sorted[name].to_numpy(dtype=float),
            exp_sorted[name].to_numpy(dtype=float),
            rtol=1e-9,
            atol=1e-9,
            err_msg=name,
        )


event_rows = st.lists(
    st.tuples(
        st.integers(0, 3),  # entity
        st.integers(0, 4 * 60),  # 15-minute slot over 2.5 days
        st.integers(-50, 50),  # amount
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=50, deadline=None, database=None)
@given(rows=event_rows)
def test_matches_brute_force(view_factory, rows: list[tuple[int, int, int]]) -> None:
    view = all_functions_view(view_factory)
    events = events_frame(rows)
    got = compute_features(view, events)
    assert_same_rows(got, reference(view, events), view)
    # sorted by time
    assert got["ts"].is_monotonic_increasing


@settings(max_examples=50, deadline=None, database=None)
@given(rows=event_rows, bounds=st.tuples(st.integers(0, 4 * 60), st.integers(1, 4 * 60)))
def test_start_end_filter_keeps_look_back(
    view_factory, rows: list[tuple[int, int, int]], bounds: tuple[int, int]
) -> None:
    view = all_functions_view(view_factory)
    events = events_frame(rows)
    start = T0 + bounds[0] * STEP
    end = start + bounds[1] * STEP
    got = compute_features(view, events, start=start, end=end)

    full = reference(view, events)
    expected = full[(full["ts"] >= start) & (full["ts"] < end)]
    assert_same_rows(got, expected, view)
    assert (got["ts"] >= start).all()
    assert (got["ts"] < end).all()


def test_window_includes_the_boundary_and_ties(view_factory) -> None:
    view = view_factory(
        features=("amount",),
        aggregations=(
            Aggregation("amount", "count", timedelta(hours=1)),
            Aggregation("amount", "sum", timedelta(hours=1)),
        ),
    )
    events = pd.DataFrame(
        {
            "card_id": ["a", "a", "a", "a", "b"],
            "ts": pd.to_datetime(
                [
                    "2024-03-01 09:59:59",  # just outside the window of the 11:00 rows
                    "2024-03-01 10:00:00",  # exactly t - 1h: inside
                    "2024-03-01 11:00:00",
                    "2024-03-01 11:00:00",  # a tie: each sees the other
                    "2024-03-01 11:00:00",  # another entity: never counted for "a"
                ],
                utc=True,
            ),
            "amount": [1000.0, 1.0, 10.0, 100.0, 5.0],
        }
    )
    got = compute_features(view, events)
    at_11 = got[(got["card_id"] == "a") & (got["ts"] == pd.Timestamp("2024-03-01 11:00Z"))]
    assert at_11["events_count_1h"].tolist() == [3.0, 3.0]
    assert at_11["amount_sum_1h"].tolist() == [111.0, 111.0]
    at_10 = got[got["ts"] == pd.Timestamp("2024-03-01 10:00Z")]
    assert at_10["events_count_1h"].tolist() == [2.0]
    assert at_10["amount_sum_1h"].tolist() == [1001.0]
    b = got[got["card_id"] == "b"]
    assert b["events_count_1h"].tolist() == [1.0]


def test_start_end_bounds_are_half_open(view_factory) -> None:
    view = view_factory(aggregations=(Aggregation("amount", "count", timedelta(hours=24)),))
    stamps = pd.to_datetime(
        [
            "2024-03-01 00:00",
            "2024-03-01 12:00",
            "2024-03-02 00:00",  # == start: kept
            "2024-03-02 12:00",
            "2024-03-03 00:00",  # == end: dropped
        ],
        utc=True,
    )
    events = pd.DataFrame({"card_id": [7] * 5, "ts": stamps, "amount": [1.0] * 5})
    got = compute_features(
        view, events, start=datetime(2024, 3, 2, tzinfo=UTC), end=datetime(2024, 3, 3, tzinfo=UTC)
    )
    assert got["ts"].tolist() == list(stamps[2:4])
    # look-back events before start still count; 03-01 00:00 is exactly 24 h before 03-02
    assert got["events_count_24h"].tolist() == [3.0, 3.0]
    assert got["card_id"].tolist() == ["7", "7"]


def test_naive_bounds_are_utc(view_factory) -> None:
    view = view_factory()
    events = events_frame([(1, 0, 1), (1, 4, 2), (1, 8, 3)])
    aware = compute_features(view, events, start=T0 + STEP, end=T0 + 8 * STEP)
    naive = compute_features(
        view,
        events,
        start=(T0 + STEP).replace(tzinfo=None),
        end=(T0 + 8 * STEP).replace(tzinfo=None),
    )
    pd.testing.assert_frame_equal(aware, naive)
    assert len(aware) == 1


def test_output_timestamp_is_utc_microseconds(view_factory) -> None:
    view = view_factory()
    paris = pd.to_datetime(["2024-03-01 12:00", "2024-03-01 12:30"]).tz_localize("Europe/Paris")
    events = pd.DataFrame({"card_id": [1, 1], "ts": paris, "amount": [1.0, 2.0]})
    got = compute_features(view, events)
    dtype = got["ts"].dtype
    assert isinstance(dtype, pd.DatetimeTZDtype)
    assert str(dtype.tz) == "UTC"
    assert dtype.unit == "us"
    assert got["ts"].tolist() == [
        pd.Timestamp("2024-03-01 11:00Z"),
        pd.Timestamp("2024-03-01 11:30Z"),
    ]
    assert got["events_count_1h"].tolist() == [1.0, 2.0]
    assert got["card_id"].dtype == object
    assert got["card_id"].tolist() == ["1", "1"]
    for name in ("amount", "events_count_1h", "amount_mean_24h"):
        assert got[name].dtype == np.float64


def test_empty_range_gives_typed_empty_frame(view_factory) -> None:
    view = view_factory()
    events = events_frame([(1, 0, 1)])
    got = compute_features(view, events, start=T0 + timedelta(days=5))
    assert got.empty
    assert list(got.columns) == ["card_id", "ts", *view.feature_names]
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"


def test_same_window_length_shares_one_window_definition(view_factory) -> None:
    view = all_functions_view(view_factory)
    sql = feature_sql(view)
    assert sql.count("w3600 AS (") == 1
    assert sql.count("w86400 AS (") == 1
    assert "RANGE BETWEEN INTERVAL 3600 SECOND PRECEDING AND CURRENT ROW" in sql


def test_unknown_column_is_an_error(view_factory) -> None:
    view = view_factory(features=("missing",))
    events = events_frame([(1, 0, 1)])
    with pytest.raises(duckdb.Error, match="missing"):
        compute_features(view, events)
