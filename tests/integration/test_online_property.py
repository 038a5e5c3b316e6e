"""Property tests of online writes, against a real SQLite file and a real Redis server.

Whatever rows of (entity, event time, values) are written, in whatever order and split
into whatever batches, each entity ends up holding its row of the newest event time (on
a tie, the one written last), the view's newest event time is the largest written, and
writing the same batches again changes nothing. Each example writes its own view and
tears it down; Redis keys live under a prefix of this module's own, deleted at the end.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops.features.online import OnlineRow, OnlineStore, build_online_store
from mlops.settings import RedisOnlineStoreSettings, SqliteOnlineStoreSettings

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FEATURES = ["f_a", "f_b"]
ENTITIES = ["u1", "u2", "u3", "ü-4", "a:b c"]
T0 = datetime(2024, 5, 1, tzinfo=UTC)
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Row = tuple[str, int, float, float]  # entity, event time (s after T0), f_a, f_b

values = st.floats(allow_nan=True, allow_infinity=True)
# Few entities and event times, so that rows of one entity and ties are common.
rows = st.tuples(st.sampled_from(ENTITIES), st.integers(-2, 3), values, values)
batches = st.lists(
    st.tuples(st.sampled_from(["v1", "v2", "v3"]), st.lists(rows, max_size=8)),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnlineStore]:
    config: SqliteOnlineStoreSettings | RedisOnlineStoreSettings
    if request.param == "sqlite":
        config = SqliteOnlineStoreSettings(path=tmp_path_factory.mktemp("online") / "online.db")
    else:
        config = RedisOnlineStoreSettings(url=REDIS_URL, key_prefix=f"test-{uuid.uuid4().hex}")
    store = build_online_store(config)
    store.update("probe")
    yield store
    store.close()
    if isinstance(config, RedisOnlineStoreSettings):
        client = redis.Redis.from_url(REDIS_URL)
        leftover = list(client.scan_iter(match=f"{config.key_prefix}:*"))
        if leftover:
            client.delete(*leftover)
        client.close()


def frame_of(batch: Sequence[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        [(entity, T0 + timedelta(seconds=s), a, b) for entity, s, a, b in batch],
        columns=["entity", "ts", *FEATURES],
    ).astype({"entity": str, "ts": "datetime64[us, UTC]", "f_a": float, "f_b": float})


def write(store: OnlineStore, view: str, version: str, batch: Sequence[Row]) -> int:
    return store.write_batch(
        view=view,
        version=version,
        frame=frame_of(batch),
        entity="entity",
        timestamp="ts",
        features=FEATURES,
        ttl=timedelta(days=1),
    )


def expected_after(
    written: Sequence[tuple[str, Sequence[Row]]],
) -> tuple[dict[str, tuple[str, Row]], list[int]]:
    """The model: per entity (version, row) kept, and how many rows each batch writes.

    Within a batch, each entity's row of its newest event time (the last such row);
    across batches, it replaces the stored one unless that one is newer.
    """
    kept: dict[str, tuple[str, Row]] = {}
    counts: list[int] = []
    for version, batch in written:
        best: dict[str, Row] = {}
        for row in batch:
            if row[0] not in best or row[1] >= best[row[0]][1]:
                best[row[0]] = row
        count = 0
        for entity, row in best.items():
            if entity not in kept or row[1] >= kept[entity][1][1]:
                kept[entity] = (version, row)
                count += 1
        counts.append(count)
    return kept, counts


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_holds(got: Mapping[str, OnlineRow | None], kept: dict[str, tuple[str, Row]]) -> None:
    for entity in ENTITIES:
        row = got[entity]
        if entity not in kept:
            assert row is None, entity
            continue
        version, (_, seconds, a, b) = kept[entity]
        assert row is not None, entity
        assert row.version == version, entity
        assert row.event_timestamp == T0 + timedelta(seconds=seconds), entity
        assert set(row.values) == set(FEATURES)
        assert same_float(row.values["f_a"], a) and same_float(row.values["f_b"], b), entity


def fingerprint(rows: Mapping[str, OnlineRow | None]) -> dict[str, object]:
    """Reads made comparable (NaN == NaN)."""
    return {
        key: None
        if row is None
        else (
            row.version,
            row.event_timestamp,
            {k: "nan" if math.isnan(v) else v for k, v in row.values.items()},
        )
        for key, row in rows.items()
    }


@PROPERTY
@given(written=batches)
def test_newest_event_per_entity_wins_and_rewrites_change_nothing(
    store: OnlineStore, written: list[tuple[str, list[Row]]]
) -> None:
    view = f"prop_{uuid.uuid4().hex}"
    kept, counts = expected_after(written)
    try:
        got_counts = [write(store, view, version, batch) for version, batch in written]

        first = store.read(view=view, keys=ENTITIES)
        assert_holds(first, kept)
        assert got_counts == counts
        newest = max((row[1] for _, batch in written for row in batch), default=None)
        assert store.newest_event_timestamp(view) == (
            None if newest is None else T0 + timedelta(seconds=newest)
        )
        matrix = store.read_matrix(view=view, keys=ENTITIES, features=FEATURES)
        assert matrix.found.tolist() == [entity in kept for entity in ENTITIES]
        assert matrix.versions == [kept[e][0] if e in kept else None for e in ENTITIES]

        for version, batch in written:  # idempotence: the same batches again
            write(store, view, version, batch)

        assert fingerprint(store.read(view=view, keys=ENTITIES)) == fingerprint(first)
        assert fingerprint(store.read_many({view: ENTITIES})[view]) == fingerprint(first)
    finally:
        store.teardown(view)


@PROPERTY
@given(
    distinct=st.lists(rows, max_size=20, unique_by=lambda row: (row[0], row[1])),
    data=st.data(),
)
def test_any_order_and_any_split_give_the_same_rows(
    store: OnlineStore, distinct: list[Row], data: st.DataObject
) -> None:
    """Rows with distinct (entity, event time): the outcome is the newest per entity."""
    order = data.draw(st.permutations(distinct), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(0, len(order))), label="cuts"))
    split = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    newest: dict[str, Row] = {}
    for row in distinct:
        if row[0] not in newest or row[1] > newest[row[0]][1]:
            newest[row[0]] = row
    view = f"prop_{uuid.uuid4().hex}"
    try:
        for batch in split:
            write(store, view, "v1", batch)

        assert_holds(
            store.read(view=view, keys=ENTITIES),
            {entity: ("v1", row) for entity, row in newest.items()},
        )
    finally:
        store.teardown(view)
