"""Materialization windows: whole UTC days, so a partition is always rewritten whole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd

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


def resolve(start: datetime | None, end: datetime | None, timestamps: pd.Series) -> Window:
    """The window to materialize: the given bounds, else the data's first/last day."""
    if start is None or end is None:
        if timestamps.empty:
            raise DataError("the source has no events in the requested window")
        first, last = timestamps.min(), timestamps.max()
        start = start or first.floor("D").to_pydatetime()
        end = end or (last.floor("D") + pd.Timedelta(days=1)).to_pydatetime()
    return Window(start=start, end=end)
