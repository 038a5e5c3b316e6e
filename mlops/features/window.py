"""Materialization windows: whole UTC days, so a partition is always rewritten whole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from mlops.errors import DataError
from mlops.features.source import to_utc


@dataclass(frozen=True)
class Window:
    start: datetime  # UTC midnight, inclusive
    end: datetime  # UTC midnight, exclusive

    @property
    def days(self) -> list[date]:
        n = (self.end - self.start) // timedelta(days=1)
        return [(self.start + timedelta(days=i)).date() for i in range(n)]

    def __str__(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


def align(
    start: datetime | str | None, end: datetime | str | None
) -> tuple[datetime | None, datetime | None]:
    """``start`` floored and ``end`` ceiled to UTC midnight (None stays None)."""
    lo = None if start is None else to_utc(start).floor("D").to_pydatetime()
    hi = None
    if end is not None:
        e = to_utc(end)
        hi = e.ceil("D").to_pydatetime()
    if lo is not None and hi is not None and hi <= lo:
        raise DataError(f"empty window: end {end} is not after start {start}")
    return lo, hi
