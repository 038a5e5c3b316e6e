"""Reading a feature view's raw events (Parquet or CSV) with clear errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from mlops.errors import DataError, SchemaError
from mlops.features.definition import FeatureView, Source


def to_utc(ts: datetime | str | pd.Timestamp) -> pd.Timestamp:
    """A tz-aware UTC timestamp; naive values are taken as UTC."""
    value = pd.Timestamp(ts)
    return value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")


def read_events(
    source: Source,
    *,
    columns: list[str],
    timestamp: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Rows of ``source`` with ``start <= timestamp < end``, timestamps as UTC.

    Raises :class:`DataError` naming the file when it is missing or unreadable and
    :class:`SchemaError` naming the column when one is missing or not a timestamp.
    """
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"source {path} does not exist")
    try:
        if source.format == "csv":
            frame = pd.read_csv(path)
        else:
            dataset = ds.dataset(path, format="parquet")
            missing = [c for c in columns if c not in dataset.schema.names]
            if missing:
                raise SchemaError(f"{path}: missing column(s) {', '.join(missing)}")
            frame = dataset.to_table(columns=columns).to_pandas()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {source.format} source {path}: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame[columns]
    if pd.api.types.is_numeric_dtype(frame[timestamp]):
        # pandas would read numbers as nanoseconds since 1970: refuse them instead.
        raise SchemaError(
            f"{path}: column {timestamp!r} is not a timestamp (dtype {frame[timestamp].dtype})"
        )
    try:
        stamps = pd.to_datetime(frame[timestamp], utc=True)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"{path}: column {timestamp!r} is not a timestamp: {exc}") from exc
    if stamps.isna().all():
        raise SchemaError(f"{path}: column {timestamp!r} has no timestamps")
    frame = frame.assign(**{timestamp: stamps.astype("datetime64[us, UTC]")})
    frame = frame[frame[timestamp].notna()]
    if start is not None:
        frame = frame[frame[timestamp] >= to_utc(start)]
    if end is not None:
        frame = frame[frame[timestamp] < to_utc(end)]
    return frame.reset_index(drop=True)


def view_events(
    view: FeatureView, *, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The events a view's features are computed from, with its aggregation look-back."""
    lookback_start = None if start is None else to_utc(start) - view.max_window
    return read_events(
        view.source,
        columns=view.source_columns,
        timestamp=view.timestamp,
        start=lookback_start,
        end=end,
    )
