"""The online store interface: the latest feature row per entity, for serving.

One module per backend (:mod:`.sqlite`, :mod:`.redis`), chosen by the ``type`` of
:class:`mlops.settings.OnlineStoreSettings` through :func:`build_online_store`.

Expiry: a row written with ``ttl`` is gone ``ttl`` after it was written (Redis ``EXPIRE``;
SQLite filters on read). Writes are event-time monotonic: a row older than the one
stored for the same entity never replaces it (an equal event time does: the later write
wins). Every row carries the version of the view that computed it, so serving can refuse
features of another version.

Reads come in three shapes: :meth:`OnlineStore.read` (one view, a mapping of rows),
:meth:`OnlineStore.read_many` (several views in one round trip) and
:meth:`OnlineStore.read_matrix` (one view as a float matrix, for the serving hot path).

Every method raises :class:`mlops.errors.StoreUnavailableError` when the backend cannot
be reached, naming where it is and the operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class OnlineRow:
    """The online features of one entity in one view."""

    values: dict[str, float]
    event_timestamp: datetime
    version: str


@dataclass(frozen=True, slots=True)
class OnlineMatrix:
    """Rows of one view for ``keys``, as arrays aligned with ``keys`` (duplicates kept).

    ``values[i, j]`` is feature ``features[j]`` of entity ``keys[i]``: NaN where the entity
    has no row (``found[i]`` is False), where its row lacks that feature, or where the
    value is NaN. ``versions[i]`` is the view version of the row (``None`` where not
    found) and ``event_ts_us[i]`` its event time in epoch microseconds, UTC (0 where not
    found).
    """

    keys: list[str]
    features: list[str]
    values: np.ndarray
    found: np.ndarray
    versions: list[str | None]
    event_ts_us: np.ndarray

    def versions_other_than(self, version: str) -> list[str]:
        """The found keys whose row was written by a version other than ``version``."""
        return [
            key
            for key, got in zip(self.keys, self.versions, strict=True)
            if got is not None and got != version
        ]


@runtime_checkable
class OnlineStore(Protocol):
    def update(self, view: str) -> None:
        """Make the storage for ``view`` ready (idempotent)."""

    def write_batch(
        self,
        *,
        view: str,
        version: str,
        frame: pd.DataFrame,
        entity: str,
        timestamp: str,
        features: Sequence[str],
        ttl: timedelta,
    ) -> int:
        """Upsert the latest row per entity of ``frame``; returns the rows written."""

    def read(self, *, view: str, keys: Sequence[str]) -> Mapping[str, OnlineRow | None]:
        """Rows for ``keys`` (``None`` where the entity has none or it expired).

        Each row carries the version it was written with. Raises
        :class:`mlops.errors.StoreUnavailableError` when the backend is unreachable.
        """

    def read_many(
        self, requests: Mapping[str, Sequence[str]]
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        """:meth:`read` for several views at once: ``{view: keys}`` → ``{view: rows}``.

        Redis answers in one round trip (up to 1,000 keys in all) whatever the number of
        views, so serving can fetch every view a model needs at once.
        """

    def read_matrix(
        self, *, view: str, keys: Sequence[str], features: Sequence[str]
    ) -> OnlineMatrix:
        """``features`` of ``keys`` as an :class:`OnlineMatrix`, in one round trip."""

    def newest_event_timestamp(self, view: str) -> datetime | None:
        """The newest event time stored for ``view`` (UTC), ``None`` when it has no rows."""

    def current_version(self, view: str) -> str | None:
        """The view version of the newest rows written for ``view`` (those of its newest
        event time; on a tie, the last written), ``None`` when it has no rows.

        Serving checks it before swapping in a model trained on another version.
        """

    def teardown(self, view: str) -> None:
        """Remove everything stored for ``view``."""

    def close(self) -> None:
        """Release connections."""
