"""Chunked, incremental, idempotent materialization; crash repair; skew; bad sources.

The library engine runs against real files, a real SQLite online store and the real
Redis server; the flow runs under the session's Prefect test API.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.materialize import materialize
from mlops.data.generate import generate_transactions, write_events
from mlops.errors import DataError, FeatureStoreError, SchemaError, StoreUnavailableError
from mlops.features.definition import FeatureView, Source
from mlops.features.materialize import materialize_chunk, materialize_view, plan
from mlops.features.offline import OfflineStore
from mlops.features.online.redis import RedisOnlineStore
from mlops.features.online.sqlite import SqliteOnlineStore
from mlops.features.registry import open_registry
from mlops.features.skew import check_skew
from mlops.settings import Settings
from mlops.specs import card_transactions_view, get_view, transactions_path

pytestmark = pytest.mark.integration

END = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_transactions(n_entities=150, days=12, seed=5, end=END)


@pytest.fixture
def source(tmp_path: Path, events: pd.DataFrame) -> Path:
    return write_events(events, tmp_path / "events.parquet")


@pytest.fixture
def view(source: Path) -> FeatureView:
    return card_transactions_view(Source.from_path(source))


def digests(offline: OfflineStore, view: FeatureView) -> dict[str, str]:
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in offline.files(view)}


def online_snapshot(
    store: SqliteOnlineStore | RedisOnlineStore, view: FeatureView, keys: list[str]
):
    rows = store.read(view=view.name, keys=keys)
    return {
        k: None if r is None else (r.version, r.event_timestamp, sorted(r.values.items()))
        for k, r in rows.items()
    }


def test_chunk_size_does_not_change_a_byte(tmp_path: Path, view: FeatureView) -> None:
    a, b = OfflineStore(tmp_path / "a"), OfflineStore(tmp_path / "b")
    online_a = SqliteOnlineStore(tmp_path / "a.db")
    online_b = SqliteOnlineStore(tmp_path / "b.db")
    one = materialize_view(view, offline=a, online=online_a, chunk_days=1)
    whole = materialize_view(view, offline=b, online=online_b, chunk_days=100)
    assert one.chunks == 12 and whole.chunks == 1  # 12 whole UTC days of events
    assert one.rows == whole.rows == len(pd.read_parquet(view.source.path))
    assert digests(a, view) == digests(b, view)
    # Newest chunk first: every entity went online once, with its newest row.
    assert one.entities_online == whole.entities_online == 150
    keys = sorted(pd.read_parquet(view.source.path)["card_id"].astype(str).unique())
    assert online_snapshot(online_a, view, keys) == online_snapshot(online_b, view, keys)
    assert check_skew(view, offline=a, online=online_a, sample=1000).rate == 0.0
    online_a.close()
    online_b.close()


def test_rerun_is_byte_and_value_identical(
    tmp_path: Path, view: FeatureView, redis_url: str
) -> None:
    offline = OfflineStore(tmp_path / "offline")
    redis = RedisOnlineStore(redis_url, key_prefix=f"test-{uuid.uuid4().hex[:8]}")
    try:
        first = materialize_view(view, offline=offline, online=redis, chunk_days=4)
        keys = sorted(pd.read_parquet(view.source.path)["card_id"].astype(str).unique())
        bytes_before, online_before = digests(offline, view), online_snapshot(redis, view, keys)
        second = materialize_view(view, offline=offline, online=redis, chunk_days=4)
        assert digests(offline, view) == bytes_before
        assert online_snapshot(redis, view, keys) == online_before
        assert first.rows == second.rows and first.entities_online == len(keys)
        assert all(v is not None and v[0] == view.version for v in online_before.values())
    finally:
        redis.teardown(view.name)
        redis.close()


def test_older_window_never_overwrites_newer_online_rows(tmp_path: Path, view: FeatureView) -> None:
    offline = OfflineStore(tmp_path / "offline")
    online = SqliteOnlineStore(tmp_path / "online.db")
    materialize_view(view, offline=offline, online=online)
    keys = sorted(pd.read_parquet(view.source.path)["card_id"].astype(str).unique())
    newest = online_snapshot(online, view, keys)
    materialize_view(view, offline=offline, online=online, end=END - timedelta(days=6))
    assert online_snapshot(online, view, keys) == newest
    online.close()


def test_matches_whole_table_computation(tmp_path: Path, view: FeatureView) -> None:
    from mlops.features.compute import compute_features
    from mlops.features.source import view_events

    offline = OfflineStore(tmp_path / "offline")
    materialize_view(
        view, offline=offline, online=SqliteOnlineStore(tmp_path / "o.db"), chunk_days=2
    )
    got = offline.read(view)
    want = compute_features(view, view_events(view))
    keys = ["event_timestamp", "card_id", "amount"]
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert (got["card_id"] == want["card_id"]).all()
    np.testing.assert_allclose(
        got[view.feature_names].to_numpy(), want[view.feature_names].to_numpy(), rtol=1e-12
    )


def test_crash_midway_is_repaired_by_a_rerun(tmp_path: Path, view: FeatureView) -> None:
    clean = OfflineStore(tmp_path / "clean")
    materialize_view(view, offline=clean, online=SqliteOnlineStore(tmp_path / "c.db"))
    offline = OfflineStore(tmp_path / "offline")
    the_plan = plan(view, chunk_days=3)
    # The process "dies" after the first chunk, while writing a day of the second:
    materialize_chunk(
        view, the_plan.chunks[-1], offline=offline, online=SqliteOnlineStore(tmp_path / "x.db")
    )
    day = the_plan.chunks[-2].days[0]
    half = offline.partition_path(view, day)
    half.parent.mkdir(parents=True)
    (half.parent / f".{half.name}.dead.tmp").write_bytes(b"PAR1 half a file")
    assert offline.days(view) == the_plan.chunks[-1].days  # the temp file is no partition

    online = SqliteOnlineStore(tmp_path / "online.db")
    materialize_view(view, offline=offline, online=online, chunk_days=3)
    assert digests(offline, view) == digests(clean, view)
    assert not list(offline.view_dir(view).rglob("*.tmp"))


def test_corrupt_partition_names_the_file_and_a_rerun_repairs_it(
    tmp_path: Path, view: FeatureView
) -> None:
    offline = OfflineStore(tmp_path / "offline")
    online = SqliteOnlineStore(tmp_path / "online.db")
    materialize_view(view, offline=offline, online=online)
    good = digests(offline, view)
    day = offline.days(view)[4]
    path = offline.partition_path(view, day)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    assert offline.unreadable_days(view) == [day]
    with pytest.raises(FeatureStoreError, match=str(path).replace("\\", "\\\\")):
        offline.read(view)
    materialize_view(view, offline=offline, online=online, start=day, end=day + timedelta(days=1))
    assert offline.unreadable_days(view) == []
    assert digests(offline, view) == good


def test_redis_down_loses_nothing_offline_and_rerun_completes(
    tmp_path: Path, view: FeatureView, redis_url: str
) -> None:
    offline = OfflineStore(tmp_path / "offline")
    down = RedisOnlineStore("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:1\b"):
        materialize_view(view, offline=offline, online=down)
    assert len(offline.days(view)) == 12  # the offline side is complete
    up = RedisOnlineStore(redis_url, key_prefix=f"test-{uuid.uuid4().hex[:8]}")
    try:
        result = materialize_view(view, offline=offline, online=up)
        assert result.entities_online == 150
        assert check_skew(view, offline=offline, online=up, sample=150).rate == 0.0
    finally:
        up.teardown(view.name)
        up.close()


def test_skew_check_finds_online_rows_that_differ(tmp_path: Path, view: FeatureView) -> None:
    offline = OfflineStore(tmp_path / "offline")
    online = SqliteOnlineStore(tmp_path / "online.db")
    materialize_view(view, offline=offline, online=online)
    healthy = check_skew(view, offline=offline, online=online, sample=1000)
    # Entities with a row in the last TTL (7 days) of partitions are sampled: most of them.
    assert 100 < healthy.sampled <= 150 and (healthy.skewed, healthy.rate) == (0, 0.0)

    latest = offline.read(view).sort_values("event_timestamp").tail(3).copy()
    latest["amount"] += 1.0  # a newer, different row for three entities
    latest["event_timestamp"] += pd.Timedelta(seconds=1)
    online.write_batch(
        view=view.name,
        version=view.version,
        frame=latest,
        entity=view.entity,
        timestamp=view.timestamp,
        features=view.feature_names,
        ttl=view.ttl,
    )
    skewed = check_skew(view, offline=offline, online=online, sample=1000)
    assert skewed.skewed == 3 and skewed.rate == pytest.approx(3 / healthy.sampled)
    assert skewed.other_event_time == 3 and skewed.by_feature["amount"] == 3
    assert {e["entity"] for e in skewed.examples} == set(latest["card_id"])


def test_created_timestamp_is_kept_in_offline_rows(tmp_path: Path, events: pd.DataFrame) -> None:
    late = events.assign(ingested_at=events["event_timestamp"] + pd.Timedelta(hours=2))
    path = write_events(late, tmp_path / "late.parquet")
    base = card_transactions_view(Source.from_path(path))
    view = FeatureView(**{**base.__dict__, "created_timestamp": "ingested_at"})
    assert view.version != base.version
    offline = OfflineStore(tmp_path / "offline")
    materialize_view(view, offline=offline, online=SqliteOnlineStore(tmp_path / "o.db"))
    rows = offline.read(view)
    assert (rows["ingested_at"] - rows["event_timestamp"] == pd.Timedelta(hours=2)).all()


def test_bad_sources_get_clear_errors(tmp_path: Path, events: pd.DataFrame) -> None:
    online = SqliteOnlineStore(tmp_path / "o.db")
    offline = OfflineStore(tmp_path / "offline")
    missing = write_events(events.drop(columns=["distance_km"]), tmp_path / "m.parquet")
    with pytest.raises(SchemaError, match=r"missing column\(s\) distance_km"):
        materialize_view(
            card_transactions_view(Source.from_path(missing)), offline=offline, online=online
        )
    numeric = write_events(
        events.assign(event_timestamp=np.arange(len(events))), tmp_path / "n.parquet"
    )
    with pytest.raises(SchemaError, match="'event_timestamp' is not a timestamp"):
        materialize_view(
            card_transactions_view(Source.from_path(numeric)), offline=offline, online=online
        )
    with pytest.raises(DataError, match="does not exist"):
        materialize_view(
            card_transactions_view(Source.from_path(tmp_path / "nope.parquet")),
            offline=offline,
            online=online,
        )
    csv = tmp_path / "events.csv"
    events.to_csv(csv, index=False)
    result = materialize_view(
        card_transactions_view(Source.from_path(csv)), offline=offline, online=online
    )
    assert result.rows == len(events)


# --- the flow -------------------------------------------------------------------------


@pytest.fixture
def home(mlops_home: Path) -> Iterator[Settings]:
    settings = Settings()
    settings.ensure_home()
    yield settings


def write_source(settings: Settings, events: pd.DataFrame) -> None:
    write_events(events, Path(transactions_path(settings)))


@pytest.mark.usefixtures("prefect_api")
def test_incremental_flow_goes_on_from_the_recorded_point(
    home: Settings, events: pd.DataFrame, tmp_path: Path
) -> None:
    cut = END - timedelta(days=4, hours=7)
    write_source(home, events[events["event_timestamp"] < cut])
    first = materialize(mode="incremental")  # nothing recorded: everything
    assert first["skew_rate"] == 0.0
    view = get_view("card_transactions", home)
    registry = open_registry(home.features.registry_url or "")
    try:
        until = registry.materialized_until(view.name, view.version)
        assert until == cut.replace(hour=0) + timedelta(days=1)

        write_source(home, events)  # four days and a bit more arrive
        second = materialize(mode="incremental")
        assert second["window"].startswith((until - timedelta(days=1)).isoformat())
        assert registry.materialized_until(view.name, view.version) == END
        assert len(registry.materializations(view.name, view.version)) == 2

        assert materialize(mode="incremental")["partitions"] == 1  # only the last day again
    finally:
        registry.dispose()

    # The result is the same as one full materialization of everything.
    full = OfflineStore(tmp_path / "full")
    materialize_view(view, offline=full, online=SqliteOnlineStore(tmp_path / "full.db"))
    assert digests(OfflineStore(home.offline_path), view) == digests(full, view)


@pytest.mark.usefixtures("prefect_api")
def test_incremental_flow_rewrites_a_damaged_partition(
    home: Settings, events: pd.DataFrame
) -> None:
    write_source(home, events)
    materialize(mode="full")
    view = get_view("card_transactions", home)
    offline = OfflineStore(home.offline_path)
    good = digests(offline, view)
    damaged = offline.days(view)[2]
    offline.partition_path(view, damaged).write_bytes(b"not parquet")
    summary = materialize(mode="incremental")
    assert summary["window"].startswith(f"{damaged.isoformat()}T00:00:00")
    assert digests(offline, view) == good
