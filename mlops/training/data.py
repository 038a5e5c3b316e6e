"""From a point-in-time joined frame to train / validation / holdout matrices."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops.errors import TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    frame: pd.DataFrame
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class TimeSplits:
    train: Split
    validation: Split
    holdout: Split
    boundaries: tuple[pd.Timestamp, pd.Timestamp]
    dropped_rows: int


def time_split(
    frame: pd.DataFrame,
    *,
    timestamp: str,
    label: str,
    feature_names: list[str],
    fractions: tuple[float, float] = (0.7, 0.85),
) -> TimeSplits:
    """Split by time: rows before the 70 % time quantile train, up to 85 % validate,
    the rest is the holdout. Rows with a missing feature are dropped (and counted)."""
    complete = frame.dropna(subset=[*feature_names, label]).sort_values(timestamp)
    dropped = len(frame) - len(complete)
    if dropped:
        logger.info("dropped %d rows with missing features or label", dropped)
    if len(complete) < 50:
        raise TrainingError(
            f"only {len(complete)} complete training rows (need at least 50): "
            "materialize more data or widen the data window"
        )
    ts = complete[timestamp]
    t1, t2 = ts.quantile(fractions[0]), ts.quantile(fractions[1])
    parts = [complete[ts < t1], complete[(ts >= t1) & (ts < t2)], complete[ts >= t2]]
    splits = []
    for name, part in zip(("train", "validation", "holdout"), parts, strict=True):
        y = part[label].to_numpy()
        if len(part) == 0 or len(np.unique(y)) < 2:
            raise TrainingError(
                f"the {name} split has {len(part)} rows and not both classes of {label!r}: "
                "more data or a wider window is needed"
            )
        x = part[feature_names].to_numpy(dtype=np.float32)
        splits.append(Split(part.reset_index(drop=True), x, y.astype(np.float32)))
    train, validation, holdout = splits
    return TimeSplits(train, validation, holdout, boundaries=(t1, t2), dropped_rows=dropped)
