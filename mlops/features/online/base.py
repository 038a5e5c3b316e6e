"""The online store interface: the latest feature row per entity, for serving.

Four methods, one module per backend (:mod:`.sqlite`, :mod:`.redis`), chosen by the
``type`` of :class:`mlops.settings.OnlineStoreSettings` through :func:`build_online_store`.

Expiry: a row written with ``ttl`` is gone ``ttl`` after it was written (Redis ``EXPIRE``;
SQLite filters on read). Writes are event-time monotonic: a row older than the one
stored for the same entity never replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import pandas as pd


@dataclass(frozen=True)
class OnlineRow:
    """The online features of one entity in one view."""

    values: dict[str, float]
    event_timestamp: datetime
    version: str


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

        Raises :class:`mlops.errors.StoreUnavailableError` when the backend is unreachable.
        """

    def teardown(self, view: str) -> None:
        """Remove everything stored for ``view``."""

    def close(self) -> None:
        """Release connections."""
