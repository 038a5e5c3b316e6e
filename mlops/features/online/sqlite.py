"""SQLite online store: the embedded default, one file, one table.

``online_features`` holds one row per (view, entity): the event time in epoch
microseconds (UTC), the feature values as a JSON object (NaN as ``null``), the view
version, and when and for how long the row was written. Expired rows are filtered on
read, count as absent when a write checks event-time order, as if they had gone, and are
left out of :meth:`SqliteOnlineStore.newest_event_timestamp` (``MAX(event_ts)``) and
:meth:`SqliteOnlineStore.current_version` (the version of the row of that event time).

The file (and its folder) is created on first use, in WAL mode so that a materialize
flow can write while the app reads. One connection is shared by all threads, behind
a lock; every statement is short.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from mlops.errors import FeatureStoreError, StoreUnavailableError
from mlops.features.online import (
    from_epoch_us,
    latest_per_entity,
    matrix_from_rows,
    ttl_seconds,
)
from mlops.features.online.base import OnlineMatrix, OnlineRow

logger = logging.getLogger(__name__)

_READ_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    version TEXT NOT NULL,
    event_ts INTEGER NOT NULL,
    written_at REAL NOT NULL,
    ttl_s INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (view, entity)
)
"""

# Event-time monotonic: an older row replaces a stored one only once that has expired.
_UPSERT = """
INSERT INTO online_features (view, entity, version, event_ts, written_at, ttl_s, payload)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (view, entity) DO UPDATE SET
    version = excluded.version,
    event_ts = excluded.event_ts,
    written_at = excluded.written_at,
    ttl_s = excluded.ttl_s,
    payload = excluded.payload
WHERE excluded.event_ts >= online_features.event_ts
   OR online_features.written_at + online_features.ttl_s < excluded.written_at
"""


class SqliteOnlineStore:
    """Online store in the SQLite file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteOnlineStore({str(self.path)!r})"

    @contextmanager
    def _connection(self, operation: str) -> Iterator[sqlite3.Connection]:
        """The shared connection, opened on first use, held under the lock."""
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._open()
                yield self._db
            except (sqlite3.OperationalError, OSError) as exc:
                raise StoreUnavailableError(
                    f"SQLite online store {self.path}: {operation} failed: {exc}"
                ) from exc
            except sqlite3.Error as exc:
                raise FeatureStoreError(
                    f"SQLite online store {self.path}: {operation} failed: {exc}"
                ) from exc

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        logger.debug("opened SQLite online store %s", self.path)
        return db

    def update(self, view: str) -> None:
        """Create the file and table if needed (one table serves every view)."""
        with self._connection(f"update({view!r})"):
            pass

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
        """Upsert each entity's latest row; returns the rows actually written.

        Rows older than the stored one for their entity are skipped, in one transaction.
        """
        latest = latest_per_entity(frame, entity=entity, timestamp=timestamp, features=features)
        if not latest.keys:
            return 0
        ttl_s = ttl_seconds(ttl)
        names = list(features)
        now = time.time()
        params = [
            (
                view,
                key,
                version,
                ts,
                now,
                ttl_s,
                json.dumps(dict(zip(names, [None if v != v else v for v in row], strict=True))),
            )
            for key, ts, row in zip(latest.keys, latest.event_ts_us, latest.values, strict=True)
        ]
        with self._connection(f"write_batch(view={view!r})") as db, db:
            written = db.executemany(_UPSERT, params).rowcount
        logger.debug("view %s: wrote %d of %d entities", view, written, len(params))
        return written

    def read(self, *, view: str, keys: Sequence[str]) -> Mapping[str, OnlineRow | None]:
        """Rows for ``keys``; ``None`` where absent or expired."""
        return self._rows({view: keys}, f"read(view={view!r})")[view]

    def read_many(
        self, requests: Mapping[str, Sequence[str]]
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        """Rows for several views' keys: one query per view (and 500 keys), one lock hold."""
        return self._rows(requests, f"read_many(views={list(requests)!r})")

    def read_matrix(
        self, *, view: str, keys: Sequence[str], features: Sequence[str]
    ) -> OnlineMatrix:
        """``features`` of ``keys`` as an :class:`OnlineMatrix` (built from :meth:`read`)."""
        rows = self._rows({view: keys}, f"read_matrix(view={view!r})")[view]
        return matrix_from_rows(rows, keys=keys, features=features)

    def _rows(
        self, requests: Mapping[str, Sequence[str]], operation: str
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        out: dict[str, dict[str, OnlineRow | None]] = {
            view: dict.fromkeys(keys) for view, keys in requests.items()
        }
        fetched: list[tuple[str, str, str, int, float, int, str]] = []
        with self._connection(operation) as db:
            for view, rows in out.items():
                unique = list(rows)
                for start in range(0, len(unique), _READ_CHUNK):
                    chunk = unique[start : start + _READ_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    fetched += db.execute(
                        "SELECT view, entity, version, event_ts, written_at, ttl_s, payload "
                        f"FROM online_features WHERE view = ? AND entity IN ({marks})",
                        (view, *chunk),
                    ).fetchall()
        now = time.time()
        for view, key, version, event_ts, written_at, ttl_s, payload in fetched:
            if written_at + ttl_s < now:
                continue
            values = {
                name: math.nan if value is None else float(value)
                for name, value in json.loads(payload).items()
            }
            out[view][key] = OnlineRow(
                values=values, event_timestamp=from_epoch_us(event_ts), version=version
            )
        return dict(out)

    def newest_event_timestamp(self, view: str) -> datetime | None:
        """``MAX(event_ts)`` over the view's rows that have not expired."""
        with self._connection(f"newest_event_timestamp({view!r})") as db:
            (newest,) = db.execute(
                "SELECT MAX(event_ts) FROM online_features "
                "WHERE view = ? AND written_at + ttl_s >= ?",
                (view, time.time()),
            ).fetchone()
        return None if newest is None else from_epoch_us(newest)

    def current_version(self, view: str) -> str | None:
        """The version of the view's newest unexpired row (by event time, then by write)."""
        with self._connection(f"current_version({view!r})") as db:
            newest = db.execute(
                "SELECT version FROM online_features "
                "WHERE view = ? AND written_at + ttl_s >= ? "
                "ORDER BY event_ts DESC, written_at DESC LIMIT 1",
                (view, time.time()),
            ).fetchone()
        return None if newest is None else str(newest[0])

    def teardown(self, view: str) -> None:
        """Delete every row of ``view``."""
        with self._connection(f"teardown({view!r})") as db, db:
            deleted = db.execute("DELETE FROM online_features WHERE view = ?", (view,)).rowcount
        logger.info("view %s: removed %d rows from %s", view, deleted, self.path)

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
