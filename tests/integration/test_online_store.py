"""The online store contract, run against real SQLite and a real Redis server.

Every behaviour test runs once per backend. Redis is ``MLOPS_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``); each test writes under its own key prefix and deletes it.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from mlops.errors import SchemaError, StoreUnavailableError
from mlops.features.online import OnlineStore, build_online_store
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


@pytest.mark.parametrize("operation", ["read", "write", "update"])
def test_unreachable_redis_is_store_unavailable(operation: str) -> None:
    store = build_online_store(
        RedisOnlineStoreSettings(url=UNREACHABLE_URL, key_prefix="t", socket_timeout_s=0.5)
    )

    with pytest.raises(StoreUnavailableError) as caught:
        if operation == "read":
            store.read(view=VIEW, keys=["u1"])
        elif operation == "write":
            write(store, rows(("u1", T0, 1.0, 1.0)))
        else:
            store.update(VIEW)

    assert UNREACHABLE_URL in str(caught.value)
    assert operation in str(caught.value)
    store.close()


def test_unreachable_redis_message_hides_the_password() -> None:
    store = build_online_store(
        RedisOnlineStoreSettings(url="redis://app:s3cret@127.0.0.1:1/0", socket_timeout_s=0.5)
    )

    with pytest.raises(StoreUnavailableError) as caught:
        store.read(view=VIEW, keys=["u1"])

    assert "s3cret" not in str(caught.value)
    assert "redis://app:***@127.0.0.1:1/0" in str(caught.value)
