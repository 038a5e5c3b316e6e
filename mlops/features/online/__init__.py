"""Online feature store: the latest feature row per entity, for serving.

:func:`build_online_store` picks the backend from the settings' ``type`` and imports
only that backend's module (``redis`` is not imported for an SQLite store).
:func:`latest_per_entity` is the batch preparation both backends share, and
:func:`matrix_from_rows` turns rows as ``read`` returns them into an :class:`OnlineMatrix`
(a backend with no faster path answers ``read_matrix`` with it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlops.errors import ConfigurationError, DataError, FeatureStoreError, SchemaError
from mlops.features.online.base import OnlineMatrix, OnlineRow, OnlineStore

if TYPE_CHECKING:
    from mlops.settings import RedisOnlineStoreSettings, SqliteOnlineStoreSettings

__all__ = [
    "LatestRows",
    "OnlineMatrix",
    "OnlineRow",
    "OnlineStore",
    "build_online_store",
    "epoch_us",
    "from_epoch_us",
    "latest_per_entity",
    "matrix_from_rows",
    "ttl_seconds",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def build_online_store(config: SqliteOnlineStoreSettings | RedisOnlineStoreSettings) -> OnlineStore:
    """The online store described by ``config``; nothing is opened until first use."""
    if config.type == "sqlite":
        from mlops.features.online.sqlite import SqliteOnlineStore

        if config.path is None:
            raise ConfigurationError(
                "the SQLite online store has no path: build it from Settings() (which fills "
                "<home>/online.db) or set MLOPS_ONLINE_STORE__PATH"
            )
        return SqliteOnlineStore(config.path)
    if config.type == "redis":
        from mlops.features.online.redis import RedisOnlineStore

        return RedisOnlineStore(
            config.url, key_prefix=config.key_prefix, socket_timeout_s=config.socket_timeout_s
        )
    raise ConfigurationError(f"unknown online store type {config.type!r}")  # pragma: no cover


@dataclass(frozen=True)
class LatestRows:
    """One row per entity, as plain Python lists in the same order."""

    keys: list[str]
    event_ts_us: list[int]
    values: list[list[float]]


def latest_per_entity(
    frame: pd.DataFrame, *, entity: str, timestamp: str, features: Sequence[str]
) -> LatestRows:
    """Keep each entity's latest row of ``frame`` by ``timestamp`` (the last one on ties).

    Naive timestamps are taken as UTC; event times become epoch microseconds and feature
    values float64 (missing values become NaN).
    """
    missing = [c for c in (entity, timestamp, *features) if c not in frame.columns]
    if missing:
        raise SchemaError(f"online write: frame lacks column(s) {', '.join(map(repr, missing))}")
    if frame.empty:
        return LatestRows(keys=[], event_ts_us=[], values=[])
    if frame[entity].isna().any():
        raise DataError(f"online write: entity column {entity!r} has missing keys")
    ts = pd.to_datetime(frame[timestamp], utc=True)
    if ts.isna().any():
        raise DataError(f"online write: timestamp column {timestamp!r} has missing values")
    ts_us = ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
    keys = frame[entity].astype(str).to_numpy()
    try:
        values = frame[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"online write: features must be numeric ({exc})") from exc
    picked = (
        pd.DataFrame({"key": keys, "ts": ts_us})
        .sort_values("ts", kind="stable")
        .drop_duplicates("key", keep="last")
        .index.to_numpy()
    )
    return LatestRows(
        keys=keys[picked].tolist(),
        event_ts_us=ts_us[picked].tolist(),
        values=values[picked].tolist(),
    )


def from_epoch_us(us: int) -> datetime:
    """Epoch microseconds → tz-aware UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=us)


def epoch_us(moment: datetime) -> int:
    """A tz-aware datetime → epoch microseconds (exact); the inverse of :func:`from_epoch_us`."""
    return (moment - _EPOCH) // _MICROSECOND


def matrix_from_rows(
    rows: Mapping[str, OnlineRow | None], *, keys: Sequence[str], features: Sequence[str]
) -> OnlineMatrix:
    """An :class:`OnlineMatrix` of ``features`` for ``keys``, from rows as ``read`` returns."""
    names = list(features)
    values = np.full((len(keys), len(names)), np.nan)
    found = np.zeros(len(keys), dtype=bool)
    event_ts_us = np.zeros(len(keys), dtype=np.int64)
    versions: list[str | None] = [None] * len(keys)
    for i, key in enumerate(keys):
        row = rows.get(key)
        if row is None:
            continue
        found[i] = True
        versions[i] = row.version
        event_ts_us[i] = epoch_us(row.event_timestamp)
        values[i] = [row.values.get(name, math.nan) for name in names]
    return OnlineMatrix(
        keys=list(keys),
        features=names,
        values=values,
        found=found,
        versions=versions,
        event_ts_us=event_ts_us,
    )


def ttl_seconds(ttl: timedelta) -> int:
    """Whole seconds of a positive ``ttl``, rounded up so a row never expires early."""
    if ttl <= timedelta(0):
        raise FeatureStoreError(f"online write: ttl must be positive, got {ttl}")
    return max(1, math.ceil(ttl.total_seconds()))
