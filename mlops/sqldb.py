"""What the platform's SQL metadata stores share: an engine from a URL, and UTC times.

The dataset catalog and the feature registry each keep their own tables, on SQLite by
default (a file in the home folder) and Postgres in production.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def create_engine(url: str, *, write_ahead_log: bool = False) -> sa.Engine:
    """An engine for ``url``; for an SQLite file, its folder is created first.

    ``write_ahead_log`` puts an SQLite file in WAL mode with ``synchronous=NORMAL``:
    readers never wait for the writer and a commit does not wait for ``fsync`` (a crash
    of the machine may lose the last commits, never corrupt the file). For logs written
    many times a second; ignored for other databases.
    """
    engine = sa.create_engine(url)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, ":memory:"):
        Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
        if write_ahead_log:
            sa.event.listen(engine, "connect", _write_ahead_log)
    return engine


def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def as_utc(value: datetime) -> datetime:
    """A stored time as tz-aware UTC (SQLite returns naive times: they were written as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
