"""Feature store statistics: every view's versions, materializations and stores.

For each feature view (code and ``features.yaml``): its current version, the versions
the feature registry knows, the last materialization of the current version (interval,
rows, partitions, entities sent online, newest event time, flow run), the offline
partitions of the current version (count, first and last day, unreadable ones) and the
online store's newest event time, the version its newest rows were written by, and the
freshness against the view's TTL. Nothing is written (views are not registered).

An online store that cannot be reached does not fail the statistics: its fields are
``None`` and ``online_error`` names the problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from mlops.errors import FeatureStoreError, MlopsError
from mlops.features.definition import FeatureView
from mlops.features.offline import OfflineStore
from mlops.features.online import OnlineStore, build_online_store
from mlops.features.registry import FeatureRegistry, MaterializationRecord, open_registry
from mlops.settings import Settings
from mlops.specs import all_views

logger = logging.getLogger(__name__)

Freshness = Literal["fresh", "stale", "empty", "unknown"]


@dataclass(frozen=True)
class ViewVersion:
    version: str
    current: bool
    first_registered_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class ViewStats:
    """Statistics of one feature view (see the module docstring)."""

    name: str
    version: str
    entity: str
    features: int
    ttl_s: int
    owner: str
    versions: list[ViewVersion]
    last_materialization: MaterializationRecord | None
    offline_partitions: int
    offline_first_day: date | None
    offline_last_day: date | None
    offline_unreadable_days: list[date]
    online_newest_event: datetime | None
    online_version: str | None
    online_age_s: float | None
    freshness: Freshness
    online_error: str | None


def _versions(registry: FeatureRegistry, view: FeatureView) -> list[ViewVersion]:
    try:
        records = registry.versions(view.name)
    except FeatureStoreError:  # never registered yet
        return []
    return [
        ViewVersion(r.version, r.version == view.version, r.first_registered_at, r.last_seen_at)
        for r in records
    ]


def view_stats(
    view: FeatureView,
    *,
    registry: FeatureRegistry,
    offline: OfflineStore,
    online: OnlineStore,
    now: datetime | None = None,
) -> ViewStats:
    """The statistics of ``view`` from the stores passed in."""
    now = now or datetime.now(UTC)
    days = offline.days(view)
    newest: datetime | None = None
    online_version: str | None = None
    error: str | None = None
    try:
        newest = online.newest_event_timestamp(view.name)
        online_version = online.current_version(view.name)
    except MlopsError as exc:
        error = str(exc)
    freshness: Freshness
    age: float | None = None
    if error is not None:
        freshness = "unknown"
    elif newest is None:
        freshness = "empty"
    else:
        newest = newest.replace(tzinfo=UTC) if newest.tzinfo is None else newest.astimezone(UTC)
        age = (now - newest).total_seconds()
        freshness = "stale" if age > view.ttl.total_seconds() else "fresh"
    return ViewStats(
        name=view.name,
        version=view.version,
        entity=view.entity,
        features=len(view.feature_names),
        ttl_s=int(view.ttl.total_seconds()),
        owner=view.owner,
        versions=_versions(registry, view),
        last_materialization=registry.last_materialization(view.name, view.version),
        offline_partitions=len(days),
        offline_first_day=days[0] if days else None,
        offline_last_day=days[-1] if days else None,
        offline_unreadable_days=offline.unreadable_days(view),
        online_newest_event=newest,
        online_version=online_version,
        online_age_s=age,
        freshness=freshness,
        online_error=error,
    )


def feature_store_stats(settings: Settings) -> list[ViewStats]:
    """Statistics of every feature view, from stores built from ``settings`` (and closed)."""
    url = settings.features.registry_url
    assert url is not None  # filled by Settings
    views = all_views(settings)
    registry = open_registry(url)
    online = build_online_store(settings.online_store)
    try:
        offline = OfflineStore(settings.offline_path)
        return [
            view_stats(view, registry=registry, offline=offline, online=online) for view in views
        ]
    finally:
        online.close()
        registry.dispose()
