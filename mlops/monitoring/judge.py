"""Live accuracy, and the decisions the monitor's thresholds make.

- **Drift** is judged only on a window of at least ``min_rows`` scored rows: fewer say
  little about a distribution. A drift share at or above ``drift_share_threshold`` emits
  ``mlops.model.drift-detected``.
- **Live accuracy** is the share of labelled rows whose logged predicted label equals the
  feedback label; it exists from one label on. Below ``min_live_accuracy`` it emits
  ``mlops.model.performance-degraded``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlops import events
from mlops.monitoring.window import LABEL, PREDICTED


@dataclass(frozen=True, slots=True)
class Thresholds:
    drift_share_threshold: float
    min_live_accuracy: float
    min_rows: int

    def __post_init__(self) -> None:
        if not 0 < self.drift_share_threshold <= 1:
            raise ValueError(
                f"drift_share_threshold must be in (0, 1], not {self.drift_share_threshold}"
            )
        if not 0 <= self.min_live_accuracy <= 1:
            raise ValueError(f"min_live_accuracy must be in [0, 1], not {self.min_live_accuracy}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, not {self.min_rows}")


@dataclass(frozen=True, slots=True)
class LiveAccuracy:
    accuracy: float | None
    """None when no row of the window has a feedback label."""
    n_labelled: int


def live_accuracy(frame: pd.DataFrame) -> LiveAccuracy:
    """Accuracy of the logged predicted labels on the rows of ``frame`` that have a feedback
    label (columns of :func:`~mlops.monitoring.window.window_frame`)."""
    labelled = frame[frame[LABEL].notna()]
    if labelled.empty:
        return LiveAccuracy(accuracy=None, n_labelled=0)
    hits = labelled[PREDICTED].to_numpy(dtype="int64") == labelled[LABEL].to_numpy(dtype="int64")
    return LiveAccuracy(accuracy=float(hits.mean()), n_labelled=len(labelled))


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the thresholds say about one window."""

    drift_judged: bool
    """False when the window had fewer than ``min_rows`` rows (no drift report)."""
    drift_detected: bool
    performance_degraded: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def events(self) -> list[str]:
        """The event names to emit, drift first."""
        names = []
        if self.drift_detected:
            names.append(events.MODEL_DRIFT_DETECTED)
        if self.performance_degraded:
            names.append(events.MODEL_PERFORMANCE_DEGRADED)
        return names


def judge(
    *,
    n_rows: int,
    drift_share: float | None,
    accuracy: LiveAccuracy,
    thresholds: Thresholds,
) -> Judgement:
    """Apply ``thresholds`` to a window's figures (``drift_share`` None: not computed)."""
    reasons: list[str] = []
    drift_judged = drift_share is not None and n_rows >= thresholds.min_rows
    if not drift_judged:
        reasons.append(
            f"drift not judged: {n_rows} rows in the window, fewer than {thresholds.min_rows}"
        )
    drifted = (
        drift_judged
        and drift_share is not None
        and (drift_share >= thresholds.drift_share_threshold)
    )
    if drift_judged:
        reasons.append(
            f"drift share {drift_share:.3f} "
            f"{'≥' if drifted else '<'} threshold {thresholds.drift_share_threshold:.3f}"
        )
    degraded = False
    if accuracy.accuracy is None:
        reasons.append("live accuracy unknown: no feedback labels in the window")
    else:
        degraded = accuracy.accuracy < thresholds.min_live_accuracy
        reasons.append(
            f"live accuracy {accuracy.accuracy:.3f} on {accuracy.n_labelled} labelled rows "
            f"{'<' if degraded else '≥'} minimum {thresholds.min_live_accuracy:.3f}"
        )
    return Judgement(
        drift_judged=drift_judged,
        drift_detected=drifted,
        performance_degraded=degraded,
        reasons=reasons,
    )


def event_payload(
    *,
    model_version: str,
    window_start: str,
    window_end: str,
    n_rows: int,
    drift_share: float | None,
    drifted_features: list[str],
    accuracy: LiveAccuracy,
    thresholds: Thresholds,
    report_uri: str | None,
) -> dict[str, Any]:
    """The payload of a monitoring event: the figures, the thresholds and the window."""
    return {
        "model_version": model_version,
        "window_start": window_start,
        "window_end": window_end,
        "n_rows": n_rows,
        "drift_share": drift_share,
        "drift_share_threshold": thresholds.drift_share_threshold,
        "drifted_features": drifted_features,
        "live_accuracy": accuracy.accuracy,
        "min_live_accuracy": thresholds.min_live_accuracy,
        "n_labelled": accuracy.n_labelled,
        "min_rows": thresholds.min_rows,
        "report_uri": report_uri,
    }
