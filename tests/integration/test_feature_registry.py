"""The feature registry on a real SQLite file and a real Postgres server.

Postgres is ``MLOPS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432``):
each test gets a fresh database ``mlops_test_<uuid>``, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mlops.datasets import open_catalog
from mlops.errors import FeatureStoreError
from mlops.features.definition import Aggregation, FeatureView, Source
from mlops.features.registry import FeatureRegistry, open_registry

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)
JAN = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'catalog.db'}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def registry(registry_url: str) -> Iterator[FeatureRegistry]:
    registry = open_registry(registry_url)
    yield registry
    registry.dispose()


def merchant_view(**overrides: Any) -> FeatureView:
    view = FeatureView(
        name="merchant_activity",
        entity="merchant_id",
        timestamp="event_timestamp",
        created_timestamp="ingested_at",
        source=Source.from_path("/data/merchant_events.parquet"),
        features=("amount",),
        aggregations=(
            Aggregation("amount", "mean", DAY),
            Aggregation("transaction_id", "count", 7 * DAY, name="tx_7d"),
        ),
        ttl=2 * DAY,
        owner="risk-team",
        description="Merchant activity.",
        tags={"team": "risk"},
    )
    return replace(view, **overrides)


def test_register_stores_the_definition_and_is_idempotent(registry: FeatureRegistry) -> None:
    view = merchant_view()
    first = registry.register(view)
    assert (first.name, first.version) == ("merchant_activity", view.version)
    assert (first.entity, first.timestamp, first.created_timestamp) == (
        "merchant_id",
        "event_timestamp",
        "ingested_at",
    )
    assert first.features == [
        {
            "name": "amount",
            "dtype": "float64",
            "kind": "column",
            "column": "amount",
            "function": None,
            "window_s": None,
        },
        {
            "name": "amount_mean_24h",
            "dtype": "float64",
            "kind": "aggregation",
            "column": "amount",
            "function": "mean",
            "window_s": 86_400,
        },
        {
            "name": "tx_7d",
            "dtype": "float64",
            "kind": "aggregation",
            "column": "transaction_id",
            "function": "count",
            "window_s": 604_800,
        },
    ]
    assert (first.ttl_s, first.owner, first.description) == (
        172_800,
        "risk-team",
        "Merchant activity.",
    )
    assert (first.tags, first.source) == ({"team": "risk"}, "/data/merchant_events.parquet")
    assert first.first_registered_at.tzinfo == UTC
    assert first.first_registered_at == first.last_seen_at
    assert abs(datetime.now(UTC) - first.first_registered_at) < timedelta(minutes=1)

    # The same version again: one row, first registration kept, seen later, new owner shown.
    again = registry.register(replace(view, owner="payments", tags={"team": "payments"}))
    assert again.version == first.version
    assert again.first_registered_at == first.first_registered_at
    assert again.last_seen_at > first.last_seen_at
    assert (again.owner, again.tags) == ("payments", {"team": "payments"})
    assert [r.version for r in registry.versions("merchant_activity")] == [view.version]


def test_a_changed_definition_is_a_new_version_and_the_old_row_remains(
    registry: FeatureRegistry,
) -> None:
    old_view = merchant_view()
    old = registry.register(old_view)
    new_view = merchant_view(ttl=3 * DAY)
    assert new_view.version != old_view.version
    new = registry.register(new_view)
    assert [r.version for r in registry.versions("merchant_activity")] == [
        new_view.version,
        old_view.version,
    ]
    (kept,) = [r for r in registry.versions("merchant_activity") if r.version == old.version]
    assert kept == old  # untouched by the new version
    assert new.ttl_s == 3 * 86_400

    other = registry.register(merchant_view(name="card_activity"))
    assert [(r.name, r.version) for r in registry.views()] == [
        ("card_activity", other.version),
        ("merchant_activity", new_view.version),
    ]
    registry.register(old_view)  # the old definition is back in use: latest seen again
    assert {r.name: r.version for r in registry.views()}["merchant_activity"] == old.version
    assert registry.versions("merchant_activity")[0].version == new_view.version


def test_versions_of_an_unknown_view_name_the_known_ones(registry: FeatureRegistry) -> None:
    with pytest.raises(FeatureStoreError, match="known: none"):
        registry.versions("nope")
    registry.register(merchant_view())
    with pytest.raises(FeatureStoreError) as info:
        registry.versions("merchant")
    assert "no feature view named 'merchant' in the feature registry; known: merchant_activity" in (
        str(info.value)
    )
    assert registry.views() != []


def test_materializations_round_trip_in_utc(registry: FeatureRegistry) -> None:
    view = merchant_view()
    assert registry.last_materialization(view.name, view.version) is None
    assert registry.materialized_until(view.name, view.version) is None
    assert registry.materializations(view.name) == []

    plus_two = timezone(timedelta(hours=2))
    record = registry.record_materialization(
        view,
        start=JAN,
        end=JAN + 7 * DAY,
        rows=1_234,
        partitions=7,
        entities_online=40,
        max_event_ts=datetime(2026, 1, 8, 1, 30, tzinfo=plus_two),  # 2026-01-07 23:30 UTC
        flow_run_id="3f1c0a0e-run",
    )
    assert record.max_event_ts == datetime(2026, 1, 7, 23, 30, tzinfo=UTC)
    assert registry.versions(view.name)[0].version == view.version  # registered it
    (stored,) = registry.materializations(view.name)
    assert stored == record
    assert stored.start.tzinfo == UTC and stored.finished_at.tzinfo == UTC
    assert (stored.rows, stored.partitions, stored.entities_online) == (1_234, 7, 40)
    assert stored.flow_run_id == "3f1c0a0e-run"

    naive = registry.record_materialization(  # naive times are UTC; no events is fine
        view,
        start=datetime(2026, 1, 8),
        end=datetime(2026, 1, 9),
        rows=0,
        partitions=0,
        entities_online=0,
        max_event_ts=None,
    )
    assert naive.start == JAN + 7 * DAY and naive.max_event_ts is None
    assert registry.materializations(view.name)[0] == naive


def test_materialized_until_is_the_latest_end_and_last_is_the_newest_run(
    registry: FeatureRegistry,
) -> None:
    view = merchant_view()
    counts = {"rows": 10, "partitions": 1, "entities_online": 3, "max_event_ts": None}
    registry.record_materialization(view, start=JAN, end=JAN + 14 * DAY, **counts)
    backfill = registry.record_materialization(  # an older interval, written later
        view, start=JAN - 7 * DAY, end=JAN, **counts
    )
    assert registry.materialized_until(view.name, view.version) == JAN + 14 * DAY
    assert registry.last_materialization(view.name, view.version) == backfill

    changed = merchant_view(ttl=3 * DAY)  # versions are counted apart
    assert registry.materialized_until(changed.name, changed.version) is None
    registry.record_materialization(changed, start=JAN, end=JAN + DAY, **counts)
    assert registry.materialized_until(changed.name, changed.version) == JAN + DAY
    assert registry.materialized_until(view.name, view.version) == JAN + 14 * DAY

    assert len(registry.materializations(view.name)) == 3
    assert len(registry.materializations(view.name, view.version)) == 2
    newest = registry.materializations(view.name, limit=1)
    assert [(m.version, m.end) for m in newest] == [(changed.version, JAN + DAY)]


def test_bad_materializations_are_refused(registry: FeatureRegistry) -> None:
    view = merchant_view()
    counts = {"partitions": 1, "entities_online": 3, "max_event_ts": None}
    with pytest.raises(FeatureStoreError, match="is before start"):
        registry.record_materialization(view, start=JAN, end=JAN - DAY, rows=1, **counts)
    with pytest.raises(FeatureStoreError, match="negative count"):
        registry.record_materialization(view, start=JAN, end=JAN + DAY, rows=-1, **counts)
    assert registry.materializations(view.name) == []


def test_the_registry_shares_the_dataset_catalog_database(registry_url: str) -> None:
    catalog = open_catalog(registry_url)
    open_registry(registry_url).dispose()
    registry = open_registry(registry_url)  # the tables exist already: nothing to do
    try:
        registry.register(merchant_view())
        assert catalog.list() == []
        tables = set(sa.inspect(registry.engine).get_table_names())
        assert {"datasets", "dataset_versions", "feature_view_versions"} <= tables
        assert "feature_materializations" in tables
    finally:
        catalog.engine.dispose()
        registry.dispose()
