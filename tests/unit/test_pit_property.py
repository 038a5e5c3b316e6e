"""The point-in-time engine against a brute-force reference, on random small tables.

The reference is the definition written as a loop: for each label, every feature row
of its entity with ``t - ttl <= ts <= t`` (and, with a created time, ``created <= t``)
is a candidate, and the greatest ``(ts, created, position)`` wins. Times sit on a
coarse grid so that ties, TTL edges and rows arriving exactly at a label's time happen
often.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops.features.definition import FeatureView, Source
from mlops.features.offline import OfflineStore
from mlops.features.pit import (
    feature_timestamp_column,
    historical_features,
    point_in_time_join,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=30)
SLOTS = 3 * 48  # three days of feature rows; labels reach into a fourth
DAYS = [date(2024, 3, 1) + timedelta(days=i) for i in range(4)]


def stamp(slot: int) -> pd.Timestamp:
    return pd.Timestamp(T0 + slot * STEP)


@dataclass(frozen=True)
class Row:
    key: int
    slot: int
    delay: int | None  # created = ts + delay steps; None: no created time


def make_views(created: bool) -> list[FeatureView]:
    """Three views: other TTLs, other column names, text or int keys, late data or not."""
    source = Source(path=Path("unused.parquet"))
    return [
        FeatureView(
            name="a",
            entity="card_id",
            timestamp="ts",
            source=source,
            features=("a_val",),
            ttl=timedelta(hours=2),
        ),
        FeatureView(
            name="b",
            entity="card_id",
            timestamp="ts",
            source=source,
            features=("b_val",),
            ttl=timedelta(days=1),
            created_timestamp="created" if created else None,
        ),
        FeatureView(
            name="c",
            entity="account",
            timestamp="event_time",
            source=source,
            features=("c_val",),
            ttl=timedelta(hours=6),
            created_timestamp="arrived" if created else None,
        ),
    ]


def frame_of(view: FeatureView, rows: list[Row], offset: float) -> pd.DataFrame:
    """Offline-like rows: view "c" has int keys, the others text; values identify rows."""
    (name,) = view.feature_names
    keys = [r.key for r in rows] if view.name == "c" else [f"{r.key}" for r in rows]
    out = pd.DataFrame(
        {
            view.entity: pd.Series(keys, dtype="int64" if view.name == "c" else object),
            view.timestamp: pd.Series(
                [stamp(r.slot) for r in rows], dtype="datetime64[ns, UTC]"
            ).astype("datetime64[us, UTC]"),
            name: [offset + i for i in range(len(rows))],
        }
    )
    if view.created_timestamp:
        created = [None if r.delay is None else stamp(r.slot + r.delay) for r in rows]
        out[view.created_timestamp] = pd.Series(created, dtype="datetime64[ns, UTC]").astype(
            "datetime64[us, UTC]"
        )
    return out


def reference(
    key: int, t: pd.Timestamp, view: FeatureView, rows: list[Row], offset: float
) -> tuple[pd.Timestamp | None, float]:
    """The brute-force answer for one label: (feature timestamp, feature value)."""
    best: tuple[tuple[pd.Timestamp, pd.Timestamp, int], int] | None = None
    for i, row in enumerate(rows):
        if row.key != key:
            continue
        ts = stamp(row.slot)
        created = ts
        if view.created_timestamp and row.delay is not None:
            created = stamp(row.slot + row.delay)
        if not (t - view.ttl <= ts <= t) or created > t:
            continue
        rank = (ts, created, i)
        if best is None or rank > best[0]:
            best = (rank, i)
    if best is None:
        return None, math.nan
    return best[0][0], offset + best[1]


rows_of = st.lists(
    st.builds(
        Row,
        key=st.integers(0, 3),
        slot=st.integers(0, SLOTS - 1),
        delay=st.one_of(st.none(), st.sampled_from([-1, 0, 1, 2, 8, 40])),
    ),
    max_size=25,
)
labels_of = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, SLOTS + 16)), min_size=1, max_size=20
)


def check(joined: pd.DataFrame, labels: list[tuple[int, int]], tables: dict) -> None:
    assert joined["label_id"].tolist() == list(range(len(labels)))
    assert joined["card_id"].tolist() == [str(k) for k, _ in labels]
    for view, (rows, offset) in tables.items():
        (name,) = view.feature_names
        fts = joined[feature_timestamp_column(view)].tolist()
        values = joined[name].tolist()
        for i, (key, slot) in enumerate(labels):
            want_ts, want = reference(key, stamp(slot), view, rows, offset)
            where = f"view {view.name}, label {i} ({key}, slot {slot})"
            if want_ts is None:
                assert pd.isna(fts[i]), where
                assert math.isnan(values[i]), where
            else:
                assert fts[i] == want_ts, where
                assert values[i] == want, where


def labels_frame(labels: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "card_id": [k for k, _ in labels],  # int keys; views a and b have text keys
            "event_timestamp": [stamp(s) for _, s in labels],
            "label_id": range(len(labels)),
        }
    )


@settings(max_examples=50, deadline=None, database=None)
@given(
    created=st.booleans(),
    labels=labels_of,
    a_rows=rows_of,
    b_rows=rows_of,
    c_rows=rows_of,
)
def test_join_matches_the_reference(
    created: bool,
    labels: list[tuple[int, int]],
    a_rows: list[Row],
    b_rows: list[Row],
    c_rows: list[Row],
) -> None:
    views = make_views(created)
    tables = {
        view: (rows, 1000.0 * (n + 1))
        for n, (view, rows) in enumerate(zip(views, (a_rows, b_rows, c_rows), strict=True))
    }
    joined = point_in_time_join(
        labels_frame(labels),
        entity="card_id",
        timestamp="event_timestamp",
        views=[(view, frame_of(view, rows, offset)) for view, (rows, offset) in tables.items()],
    )
    check(joined, labels, tables)


@settings(max_examples=40, deadline=None, database=None)
@given(
    created=st.booleans(),
    labels=labels_of,
    a_rows=rows_of,
    b_rows=rows_of,
    c_rows=rows_of,
)
def test_offline_store_join_matches_the_reference(
    created: bool,
    labels: list[tuple[int, int]],
    a_rows: list[Row],
    b_rows: list[Row],
    c_rows: list[Row],
) -> None:
    views = make_views(created)
    tables = {
        view: (rows, 1000.0 * (n + 1))
        for n, (view, rows) in enumerate(zip(views, (a_rows, b_rows, c_rows), strict=True))
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = OfflineStore(Path(tmp))
        for view, (rows, offset) in tables.items():
            store.write(view, frame_of(view, rows, offset), DAYS)
        joined = historical_features(
            labels_frame(labels),
            entity="card_id",
            timestamp="event_timestamp",
            views=views,
            offline=store,
        )
    check(joined, labels, tables)
