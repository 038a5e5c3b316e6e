"""What the platform's SQL metadata stores share: an engine from a URL, and UTC times.

The dataset catalog and the feature registry each keep their own tables, on SQLite by
default (a file in the home folder) and Postgres in production.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; for an SQLite file, its folder is created first."""
    engine = sa.create_engine(url)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, ":memory:"):
        Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
    return engine


def as_utc(value: datetime) -> datetime:
    """A stored time as tz-aware UTC (SQLite returns naive times: they were written as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
