"""The online store contract, run against real SQLite and a real Redis server.

Every behaviour test runs once per backend. Redis is ``MLOPS_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``); each test writes under its own key prefix and deletes it.
"""

from __future__ import annotations

import math
import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from mlops.errors import FeatureStoreError, SchemaError, StoreUnavailableError
from mlops.features.online import OnlineStore, build_online_store
from mlops.features.online.redis import RedisOnlineStore
from mlops.settings import RedisOnlineStoreSettings, SqliteOnlineStoreSettings

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_URL = "redis://127.0.0.1:1/0"
VIEW = "user_stats"
FEATURES = ["amount_sum_1h", "events_count_24h"]
DAY = timedelta(days=1)
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    """An empty store of each backend, built from settings as the platform does."""
    config: SqliteOnlineStoreSettings | RedisOnlineStoreSettings
    if request.param == "sqlite":
        config = SqliteOnlineStoreSettings(path=tmp_path / "online" / "online.db")
    else:
        config = RedisOnlineStoreSettings(url=REDIS_URL, key_prefix=f"test-{uuid.uuid4().hex}")
    store = build_online_store(config)
    store.update(VIEW)  # the readiness probe: fails (never skips) when Redis is down
    yield store
    store.close()
    if isinstance(config, RedisOnlineStoreSettings):
        client = redis.Redis.from_url(REDIS_URL)
        leftover = list(client.scan_iter(match=f"{config.key_prefix}:*"))
        if leftover:
            client.delete(*leftover)
        client.close()


def rows(*records: tuple[str, datetime, float, float]) -> pd.DataFrame:
    """A materialized frame: entity, event time, two features."""
    return pd.DataFrame(records, columns=["user_id", "ts", *FEATURES]).astype(
        {"ts": "datetime64[us, UTC]"}
    )


def write(
    store: OnlineStore, frame: pd.DataFrame, *, version: str = "v1", ttl: timedelta = DAY
) -> int:
    return store.write_batch(
        view=VIEW,
        version=version,
        frame=frame,
        entity="user_id",
        timestamp="ts",
        features=FEATURES,
        ttl=ttl,
    )


def test_roundtrip_values_version_and_event_time(store: OnlineStore) -> None:
    written = write(store, rows(("u1", T0, 12.5, 3.0), ("u2", T0 + DAY, -0.1, 0.0)), version="abc")

    got = store.read(view=VIEW, keys=["u1", "u2"])

    assert written == 2
    u1, u2 = got["u1"], got["u2"]
    assert u1 is not None and u2 is not None
    assert u1.values == {"amount_sum_1h": 12.5, "events_count_24h": 3.0}
    assert u2.values == {"amount_sum_1h": -0.1, "events_count_24h": 0.0}
    assert u1.version == "abc"
    assert u1.event_timestamp == T0 and u1.event_timestamp.utcoffset() == timedelta(0)
    assert u2.event_timestamp == T0 + DAY


@pytest.mark.parametrize(
    "timestamps",
    [
        pd.Series([T0], dtype="datetime64[ns, UTC]"),
        pd.Series([T0.replace(tzinfo=None)], dtype="datetime64[ns]"),
        pd.Series([T0]).dt.tz_convert("Europe/Berlin"),
        pd.Series([T0.replace(tzinfo=None)]),
    ],
    ids=["aware-ns", "naive-ns", "other-zone", "naive-default"],
)
def test_timestamps_aware_or_naive_are_utc(store: OnlineStore, timestamps: pd.Series) -> None:
    frame = pd.DataFrame({"user_id": ["u1"], "ts": timestamps, FEATURES[0]: [1.0]})
    frame[FEATURES[1]] = 2.0

    write(store, frame)

    row = store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None and row.event_timestamp == T0


def test_latest_row_per_entity_wins_within_a_batch(store: OnlineStore) -> None:
    frame = rows(
        ("u1", T0 + 2 * DAY, 3.0, 3.0),
        ("u1", T0, 1.0, 1.0),
        ("u2", T0, 7.0, 7.0),
        ("u1", T0 + DAY, 2.0, 2.0),
        ("u2", T0, 8.0, 8.0),  # a tie: the later row of the frame wins
    )

    written = write(store, frame)

    got = store.read(view=VIEW, keys=["u1", "u2"])
    assert written == 2
    assert got["u1"] is not None and got["u1"].values[FEATURES[0]] == 3.0
    assert got["u1"].event_timestamp == T0 + 2 * DAY
    assert got["u2"] is not None and got["u2"].values[FEATURES[0]] == 8.0


def test_older_rows_never_overwrite_newer(store: OnlineStore) -> None:
    assert write(store, rows(("u1", T0 + DAY, 2.0, 2.0)), version="new") == 1

    assert write(store, rows(("u1", T0, 1.0, 1.0)), version="old") == 0

    row = store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None
    assert (row.values[FEATURES[0]], row.version, row.event_timestamp) == (2.0, "new", T0 + DAY)


def test_same_event_time_overwrites(store: OnlineStore) -> None:
    write(store, rows(("u1", T0, 1.0, 1.0)), version="v1")

    assert write(store, rows(("u1", T0, 5.0, 5.0)), version="v2") == 1

    row = store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None and (row.values[FEATURES[0]], row.version) == (5.0, "v2")


def test_out_of_order_batches_keep_the_latest_event(store: OnlineStore) -> None:
    rng = random.Random(7)
    batches = [
        rows(*((f"u{e}", T0 + timedelta(hours=h), float(h), float(e)) for e in range(20)))
        for h in range(10)
    ]
    rng.shuffle(batches)

    for batch in batches:
        write(store, batch)

    got = store.read(view=VIEW, keys=[f"u{e}" for e in range(20)])
    for e in range(20):
        row = got[f"u{e}"]
        assert row is not None
        assert row.values == {"amount_sum_1h": 9.0, "events_count_24h": float(e)}
        assert row.event_timestamp == T0 + timedelta(hours=9)


def test_rows_expire_after_ttl_and_then_count_as_gone(store: OnlineStore) -> None:
    write(store, rows(("u1", T0 + DAY, 2.0, 2.0)), ttl=timedelta(seconds=1))
    assert store.read(view=VIEW, keys=["u1"])["u1"] is not None

    time.sleep(1.2)

    assert store.read(view=VIEW, keys=["u1"])["u1"] is None
    # An expired row no longer blocks an older event from being written.
    assert write(store, rows(("u1", T0, 1.0, 1.0))) == 1
    row = store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None and row.event_timestamp == T0


def test_missing_keys_read_as_none(store: OnlineStore) -> None:
    write(store, rows(("u1", T0, 1.0, 1.0)))

    got = store.read(view=VIEW, keys=["nobody", "u1", "nobody"])

    assert set(got) == {"nobody", "u1"}
    assert got["nobody"] is None and got["u1"] is not None
    assert store.read(view="other_view", keys=["u1"]) == {"u1": None}
    assert store.read(view=VIEW, keys=[]) == {}


def test_teardown_removes_only_its_view(store: OnlineStore) -> None:
    write(store, rows(("u1", T0, 1.0, 1.0), ("u2", T0, 2.0, 2.0)))
    store.write_batch(
        view="other_view",
        version="v1",
        frame=rows(("u1", T0, 9.0, 9.0)),
        entity="user_id",
        timestamp="ts",
        features=FEATURES,
        ttl=DAY,
    )

    store.teardown(VIEW)

    assert store.read(view=VIEW, keys=["u1", "u2"]) == {"u1": None, "u2": None}
    assert store.read(view="other_view", keys=["u1"])["u1"] is not None


def test_nan_values_roundtrip(store: OnlineStore) -> None:
    frame = rows(("u1", T0, math.nan, 4.0))

    write(store, frame)

    row = store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None
    assert math.isnan(row.values["amount_sum_1h"]) and row.values["events_count_24h"] == 4.0


def test_two_thousand_entities_roundtrip(store: OnlineStore) -> None:
    n = 2_000
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "ts": pd.date_range(T0, periods=n, freq="s"),
            "amount_sum_1h": [i / 10 for i in range(n)],
            "events_count_24h": [float(i % 7) for i in range(n)],
        }
    )

    assert write(store, frame) == n

    got = store.read(view=VIEW, keys=[f"u{i}" for i in range(n)])
    assert len(got) == n
    for i in (0, 499, 500, 999, 1000, 1999):
        row = got[f"u{i}"]
        assert row is not None
        assert row.values == {"amount_sum_1h": i / 10, "events_count_24h": float(i % 7)}
        assert row.event_timestamp == T0 + timedelta(seconds=i)


def test_concurrent_reads_from_eight_threads(store: OnlineStore) -> None:
    keys = [f"u{i}" for i in range(100)]
    write(store, rows(*((k, T0, float(i), 1.0) for i, k in enumerate(keys))))

    def read_many(worker: int) -> int:
        hits = 0
        for round_ in range(50):
            wanted = keys[(worker + round_) % 50 :][:20]
            got = store.read(view=VIEW, keys=wanted)
            for k in wanted:
                row = got[k]
                hits += row is not None and row.values[FEATURES[0]] == float(k[1:])
        return hits

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(read_many, range(8)))

    assert results == [50 * 20] * 8


def test_missing_columns_are_a_schema_error(store: OnlineStore) -> None:
    frame = rows(("u1", T0, 1.0, 1.0)).drop(columns=["events_count_24h"])

    with pytest.raises(SchemaError, match="events_count_24h"):
        write(store, frame)


def test_read_of_many_keys_returns_each_keys_version(store: OnlineStore) -> None:
    write(store, rows(*((f"u{i}", T0, float(i), 0.0) for i in range(0, 300, 2))), version="old")
    write(store, rows(*((f"u{i}", T0, float(i), 1.0) for i in range(1, 300, 2))), version="new")

    got = store.read(view=VIEW, keys=[f"u{i}" for i in range(300)])

    for i in range(300):
        row = got[f"u{i}"]
        assert row is not None and row.version == ("new" if i % 2 else "old")
        assert row.values == {"amount_sum_1h": float(i), "events_count_24h": float(i % 2)}


def write_view(store: OnlineStore, view: str, frame: pd.DataFrame, *, version: str) -> None:
    store.write_batch(
        view=view,
        version=version,
        frame=frame,
        entity="user_id",
        timestamp="ts",
        features=FEATURES,
        ttl=DAY,
    )


def test_read_many_reads_several_views_at_once(store: OnlineStore) -> None:
    write(store, rows(("u1", T0, 1.0, 1.0), ("u2", T0, 2.0, 2.0)), version="a1")
    write_view(store, "other_view", rows(("u1", T0 + DAY, 9.0, 9.0)), version="b7")

    got = store.read_many(
        {VIEW: ["u1", "u2", "nobody", "u1"], "other_view": ["u1", "u2"], "empty_view": []}
    )

    assert set(got) == {VIEW, "other_view", "empty_view"}
    mine, other = got[VIEW], got["other_view"]
    assert set(mine) == {"u1", "u2", "nobody"} and mine["nobody"] is None
    assert mine["u1"] is not None and (mine["u1"].values[FEATURES[0]], mine["u1"].version) == (
        1.0,
        "a1",
    )
    assert other["u1"] is not None and other["u1"].version == "b7"
    assert other["u1"].event_timestamp == T0 + DAY and other["u2"] is None
    assert got["empty_view"] == {}
    assert store.read_many({}) == {}
    assert store.read_many({VIEW: ["u2"]})[VIEW] == store.read(view=VIEW, keys=["u2"])


def test_read_matrix_aligns_with_keys_and_features(store: OnlineStore) -> None:
    write(store, rows(("u1", T0, 1.5, 10.0), ("u2", T0 + DAY, math.nan, 20.0)), version="v9")

    got = store.read_matrix(
        view=VIEW, keys=["u2", "nobody", "u1", "u2"], features=[FEATURES[1], "absent", FEATURES[0]]
    )

    assert got.keys == ["u2", "nobody", "u1", "u2"]
    assert got.features == [FEATURES[1], "absent", FEATURES[0]]
    np.testing.assert_array_equal(
        got.values,
        [[20.0, np.nan, np.nan], [np.nan] * 3, [10.0, np.nan, 1.5], [20.0, np.nan, np.nan]],
    )
    assert got.found.tolist() == [True, False, True, True]
    assert got.versions == ["v9", None, "v9", "v9"]
    us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    day_us = 86_400 * 10**6
    assert got.event_ts_us.tolist() == [us + day_us, 0, us, us + day_us]
    assert got.versions_other_than("v9") == [] and got.versions_other_than("v1") == [
        "u2",
        "u1",
        "u2",
    ]
    empty = store.read_matrix(view=VIEW, keys=[], features=FEATURES)
    assert empty.values.shape == (0, 2) and empty.found.shape == (0,)


def test_read_matrix_rows_of_different_layouts(store: OnlineStore) -> None:
    """Two versions of a view with different features, side by side until rematerialized."""
    write(store, rows(("u1", T0, 1.0, 2.0)), version="v1")
    store.write_batch(
        view=VIEW,
        version="v2",
        frame=rows(("u2", T0, 3.0, 4.0)).rename(columns={FEATURES[1]: "clicks"}),
        entity="user_id",
        timestamp="ts",
        features=["clicks", FEATURES[0]],
        ttl=DAY,
    )

    got = store.read_matrix(view=VIEW, keys=["u1", "u2"], features=[FEATURES[0], "clicks"])

    np.testing.assert_array_equal(got.values, [[1.0, np.nan], [3.0, 4.0]])
    assert got.versions == ["v1", "v2"]
    u2 = store.read(view=VIEW, keys=["u2"])["u2"]
    assert u2 is not None and u2.values == {"clicks": 4.0, FEATURES[0]: 3.0}


def test_newest_event_timestamp_follows_writes(store: OnlineStore) -> None:
    assert store.newest_event_timestamp(VIEW) is None

    write(store, rows(("u1", T0 + DAY, 1.0, 1.0), ("u2", T0, 1.0, 1.0)))
    newest = store.newest_event_timestamp(VIEW)
    assert newest == T0 + DAY and newest.utcoffset() == timedelta(0)

    write(store, rows(("u3", T0 - DAY, 1.0, 1.0)))  # older: the newest stays
    assert store.newest_event_timestamp(VIEW) == T0 + DAY
    write(store, rows(("u2", T0 + 2 * DAY, 1.0, 1.0)))
    assert store.newest_event_timestamp(VIEW) == T0 + 2 * DAY
    assert store.newest_event_timestamp("other_view") is None

    store.teardown(VIEW)

    assert store.newest_event_timestamp(VIEW) is None


def test_newest_event_timestamp_forgets_expired_rows(store: OnlineStore) -> None:
    write(store, rows(("u1", T0 + DAY, 1.0, 1.0)), ttl=timedelta(seconds=1))
    assert store.newest_event_timestamp(VIEW) == T0 + DAY

    time.sleep(1.2)

    assert store.newest_event_timestamp(VIEW) is None


# --- Redis specifics ------------------------------------------------------------------


@pytest.fixture
def redis_store() -> Iterator[RedisOnlineStore]:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisOnlineStore(REDIS_URL, key_prefix=prefix)
    yield store
    store.close()
    client = redis.Redis.from_url(REDIS_URL)
    leftover = list(client.scan_iter(match=f"{prefix}*"))
    if leftover:
        client.delete(*leftover)
    client.close()


def test_redis_layout_hash_per_entity_with_ttl_and_a_meta_hash(
    redis_store: RedisOnlineStore,
) -> None:
    write(redis_store, rows(("u1", T0, 1.5, math.nan)), version="abc")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"{redis_store.key_prefix}:{VIEW}:u1"
        stored = client.hgetall(key)
        assert 0 < client.ttl(key) <= 86_400
        meta = f"{redis_store.key_prefix}:{VIEW}"
        assert client.hgetall(meta) == {b"max_ts": stored[b"__ts"], b"version": b"abc"}
        assert 0 < client.ttl(meta) <= 86_400
        us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert stored[b"__ts"] == str(us).encode() and stored[b"__v"] == b"abc"
        assert stored[b"__f"] == "\x1f".join(FEATURES).encode()
        packed = stored[b"__x"]
        assert isinstance(packed, bytes)
        values = struct.unpack("<2d", packed)
        assert values[0] == 1.5 and math.isnan(values[1])

        redis_store.teardown(VIEW)

        assert not client.exists(key) and not client.exists(meta)
    finally:
        client.close()


def test_redis_reads_rows_of_the_older_layout(redis_store: RedisOnlineStore) -> None:
    """A field per feature holding repr(float), as written before the packed layout."""
    us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key, (a, b) in {"u1": (1.25, math.nan), "u2": (-0.1, math.inf)}.items():
            client.hset(
                f"{redis_store.key_prefix}:{VIEW}:{key}",
                mapping={"__ts": us, "__v": "old", FEATURES[0]: repr(a), FEATURES[1]: repr(b)},
            )
    finally:
        client.close()
    write(redis_store, rows(("u3", T0, 3.0, 3.0)), version="new")

    got = redis_store.read(view=VIEW, keys=["u1", "u3", "u2"])
    matrix = redis_store.read_matrix(view=VIEW, keys=["u2", "u3", "u1"], features=FEATURES)

    u1, u2 = got["u1"], got["u2"]
    assert u1 is not None and u1.version == "old" and u1.event_timestamp == T0
    assert u1.values[FEATURES[0]] == 1.25 and math.isnan(u1.values[FEATURES[1]])
    assert u2 is not None and u2.values == {FEATURES[0]: -0.1, FEATURES[1]: math.inf}
    np.testing.assert_array_equal(matrix.values, [[-0.1, math.inf], [3.0, 3.0], [1.25, math.nan]])
    assert matrix.versions == ["old", "new", "old"]
    # An older-layout row is replaced whole by a newer write.
    write(redis_store, rows(("u1", T0 + DAY, 5.0, 6.0)), version="new")
    row = redis_store.read(view=VIEW, keys=["u1"])["u1"]
    assert row is not None and row.values == {FEATURES[0]: 5.0, FEATURES[1]: 6.0}
    client = redis.Redis.from_url(REDIS_URL)
    try:  # its per-feature fields are gone, not left beside the packed ones
        fields = client.hkeys(f"{redis_store.key_prefix}:{VIEW}:u1")
    finally:
        client.close()
    assert sorted(fields) == [b"__f", b"__ts", b"__v", b"__x"]


def test_redis_key_of_another_type_is_a_store_error(redis_store: RedisOnlineStore) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(f"{redis_store.key_prefix}:{VIEW}:u1", "not a hash", ex=60)
    finally:
        client.close()

    with pytest.raises(FeatureStoreError, match="read") as caught:
        redis_store.read(view=VIEW, keys=["u1"])

    assert not isinstance(caught.value, StoreUnavailableError)


def test_redis_refuses_names_with_its_separators(redis_store: RedisOnlineStore) -> None:
    frame = rows(("u1", T0, 1.0, 1.0)).rename(columns={FEATURES[0]: "bad\x1fname"})

    with pytest.raises(SchemaError, match="control character"):
        redis_store.write_batch(
            view=VIEW,
            version="v1",
            frame=frame,
            entity="user_id",
            timestamp="ts",
            features=["bad\x1fname", FEATURES[1]],
            ttl=DAY,
        )
    with pytest.raises(SchemaError, match="version"):
        write(redis_store, rows(("u1", T0, 1.0, 1.0)), version="v\x1e1")


def test_redis_writes_in_chunks_keep_the_newest_per_entity(redis_store: RedisOnlineStore) -> None:
    n = 1_234  # more than one write script call
    first = rows(*((f"u{i}", T0 + timedelta(seconds=i % 3), float(i), 0.0) for i in range(n)))
    second = rows(*((f"u{i}", T0 + timedelta(seconds=1), -1.0, 1.0) for i in range(n)))

    assert write(redis_store, first) == n
    written = write(redis_store, second)

    assert written == sum(1 for i in range(n) if i % 3 <= 1)
    got = redis_store.read_matrix(view=VIEW, keys=[f"u{i}" for i in range(n)], features=FEATURES)
    expected = [[float(i), 0.0] if i % 3 == 2 else [-1.0, 1.0] for i in range(n)]
    np.testing.assert_array_equal(got.values, expected)
    assert redis_store.newest_event_timestamp(VIEW) == T0 + timedelta(seconds=2)


# --- failures -------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[OnlineStore], object]] = {
    "update": lambda store: store.update(VIEW),
    "write_batch": lambda store: write(store, rows(("u1", T0, 1.0, 1.0))),
    "read": lambda store: store.read(view=VIEW, keys=["u1"]),
    "read_many": lambda store: store.read_many({VIEW: ["u1"], "other_view": ["u2"]}),
    "read_matrix": lambda store: store.read_matrix(view=VIEW, keys=["u1"], features=FEATURES),
    "newest_event_timestamp": lambda store: store.newest_event_timestamp(VIEW),
    "teardown": lambda store: store.teardown(VIEW),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_unreachable_redis_is_store_unavailable_at_once(operation: str) -> None:
    store = build_online_store(
        RedisOnlineStoreSettings(url=UNREACHABLE_URL, key_prefix="t", socket_timeout_s=0.5)
    )
    started = time.perf_counter()

    with pytest.raises(StoreUnavailableError) as caught:
        OPERATIONS[operation](store)

    assert time.perf_counter() - started < 1.0
    assert UNREACHABLE_URL in str(caught.value)
    assert operation in str(caught.value)
    store.close()


@pytest.mark.parametrize("operation", ["read", "write_batch", "newest_event_timestamp"])
def test_silent_redis_is_store_unavailable_after_the_socket_timeout(operation: str) -> None:
    """A server that accepts connections but never answers: the timeout, one retry, done."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = build_online_store(
            RedisOnlineStoreSettings(url=url, key_prefix="t", socket_timeout_s=0.2)
        )
        started = time.perf_counter()

        with pytest.raises(StoreUnavailableError) as caught:
            OPERATIONS[operation](store)

        assert time.perf_counter() - started < 2.0  # 2 tries x 0.2 s, and slack
        assert url in str(caught.value) and operation in str(caught.value)
        store.close()


def test_unreachable_redis_message_hides_the_password() -> None:
    store = build_online_store(
        RedisOnlineStoreSettings(url="redis://app:s3cret@127.0.0.1:1/0", socket_timeout_s=0.5)
    )

    with pytest.raises(StoreUnavailableError) as caught:
        store.read(view=VIEW, keys=["u1"])

    assert "s3cret" not in str(caught.value)
    assert "redis://app:***@127.0.0.1:1/0" in str(caught.value)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_unwritable_sqlite_path_is_store_unavailable_at_once(
    operation: str, tmp_path: Path
) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    path = regular_file / "online" / "online.db"
    store = build_online_store(SqliteOnlineStoreSettings(path=path))
    started = time.perf_counter()

    with pytest.raises(StoreUnavailableError) as caught:
        OPERATIONS[operation](store)

    assert time.perf_counter() - started < 1.0
    assert str(path) in str(caught.value) and operation in str(caught.value)
    store.close()


# --- current_version ------------------------------------------------------------------


def test_current_version_is_that_of_the_newest_rows(store: OnlineStore) -> None:
    assert store.current_version(VIEW) is None

    write(store, rows(("u1", T0 + DAY, 1.0, 1.0), ("u2", T0, 1.0, 1.0)), version="v1")
    assert store.current_version(VIEW) == "v1"

    write(store, rows(("u3", T0 - DAY, 1.0, 1.0)), version="v2")  # older rows: v1 stays
    assert store.current_version(VIEW) == "v1"
    write(store, rows(("u1", T0 + DAY, 2.0, 2.0)), version="v3")  # the same event time wins
    assert store.current_version(VIEW) == "v3"
    write(store, rows(("u2", T0 + 2 * DAY, 1.0, 1.0)), version="v4")  # a newer event
    assert store.current_version(VIEW) == "v4"
    assert store.newest_event_timestamp(VIEW) == T0 + 2 * DAY
    assert store.current_version("other_view") is None

    store.teardown(VIEW)

    assert store.current_version(VIEW) is None


def test_current_version_of_a_rematerialized_view(store: OnlineStore) -> None:
    """A new view version rewriting the same events (and more than one script call)."""
    entities = [(f"u{i}", T0 + timedelta(seconds=i % 7), float(i), 0.0) for i in range(1_500)]
    write(store, rows(*entities), version="old")
    assert store.current_version(VIEW) == "old"

    write(store, rows(*entities), version="new")

    assert store.current_version(VIEW) == "new"
    got = store.read(view=VIEW, keys=["u0", "u1499"])
    assert {row.version for row in got.values() if row is not None} == {"new"}


def test_current_version_forgets_expired_rows(store: OnlineStore) -> None:
    write(store, rows(("u1", T0 + DAY, 1.0, 1.0)), version="v1", ttl=timedelta(seconds=1))
    assert store.current_version(VIEW) == "v1"

    time.sleep(1.2)

    assert store.current_version(VIEW) is None


def test_current_version_of_unreachable_stores_is_store_unavailable(tmp_path: Path) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    stores = [
        build_online_store(
            RedisOnlineStoreSettings(url=UNREACHABLE_URL, key_prefix="t", socket_timeout_s=0.5)
        ),
        build_online_store(SqliteOnlineStoreSettings(path=regular_file / "online.db")),
    ]
    for unreachable in stores:
        started = time.perf_counter()

        with pytest.raises(StoreUnavailableError, match="current_version"):
            unreachable.current_version(VIEW)

        assert time.perf_counter() - started < 1.0
        unreachable.close()
