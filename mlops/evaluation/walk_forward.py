"""Walk-forward evaluation: the newest labelled window cut into consecutive time folds.

The window is the holdout a version was trained against (the newest 15 % of its
training data by time, which neither training nor early stopping saw). It is sorted by
time and cut into ``folds`` consecutive slices of (nearly) equal row counts, oldest
first; challenger and champion are scored on each, so a model that is only good on part
of the window (a recent shift, one lucky week) shows it fold by fold instead of hiding
it in one average. ``folds=1`` is the whole holdout, as a single evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops.errors import DataError
from mlops.training.metrics import classification_metrics


@dataclass(frozen=True)
class Fold:
    """One time slice of the evaluation window: rows with ``start <= timestamp <= end``."""

    index: int  # 1-based, oldest first
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame

    @property
    def rows(self) -> int:
        return len(self.frame)


def time_folds(frame: pd.DataFrame, *, timestamp: str, folds: int) -> list[Fold]:
    """``frame`` sorted by ``timestamp`` and cut into ``folds`` consecutive folds of
    (nearly) equal row counts, oldest first; every row is in exactly one fold.

    Raises ``ValueError`` for ``folds < 1`` and :class:`DataError` when the frame has
    fewer rows than folds or no ``timestamp`` column.
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    if timestamp not in frame.columns:
        raise DataError(
            f"the evaluation window has no timestamp column {timestamp!r} "
            f"(it has {', '.join(map(str, frame.columns))})"
        )
    if len(frame) < folds:
        raise DataError(
            f"the evaluation window has {len(frame)} rows, too few for {folds} folds: "
            "use fewer folds or train on more data"
        )
    ordered = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
    result = []
    for i, positions in enumerate(np.array_split(np.arange(len(ordered)), folds), start=1):
        part = ordered.iloc[positions].reset_index(drop=True)
        stamps = part[timestamp]
        result.append(Fold(i, stamps.iloc[0], stamps.iloc[-1], part))
    return result


def fold_metrics(folds: list[Fold], label: str, p_positive: np.ndarray) -> list[dict[str, float]]:
    """Classification metrics of each fold, given the positive-class probabilities of
    the folds' rows concatenated in fold order (as :func:`time_folds` returns them)."""
    sizes = [f.rows for f in folds]
    if len(p_positive) != sum(sizes):
        raise ValueError(
            f"{len(p_positive)} predictions for {sum(sizes)} rows in {len(folds)} folds"
        )
    bounds = np.cumsum([0, *sizes])
    return [
        classification_metrics(f.frame[label].to_numpy(), p_positive[lo:hi])
        for f, lo, hi in zip(folds, bounds[:-1], bounds[1:], strict=True)
    ]


def fold_table(
    folds: list[Fold],
    challenger: list[dict[str, float]],
    champion: list[dict[str, float]] | None,
    label: str,
) -> list[dict[str, object]]:
    """One row per fold for a table artifact: its time span, size, positives and both
    models' ROC AUC / PR AUC / log loss side by side (champion columns empty without one)."""
    rows: list[dict[str, object]] = []
    for i, fold in enumerate(folds):
        ours = challenger[i]
        theirs = champion[i] if champion is not None else None
        row: dict[str, object] = {
            "fold": fold.index,
            "start": fold.start.isoformat(),
            "end": fold.end.isoformat(),
            "rows": fold.rows,
            "positives": int(fold.frame[label].sum()),
        }
        for metric in ("roc_auc", "pr_auc", "log_loss"):
            row[f"challenger_{metric}"] = _rounded(ours[metric])
            row[f"champion_{metric}"] = None if theirs is None else _rounded(theirs[metric])
        row["roc_auc_change"] = (
            None if theirs is None else _rounded(ours["roc_auc"] - theirs["roc_auc"])
        )
        rows.append(row)
    return rows


def _rounded(value: float) -> float | None:
    """Six significant digits for display; NaN (undefined) becomes an empty cell."""
    return None if np.isnan(value) else float(f"{value:.6g}")
