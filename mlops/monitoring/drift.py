"""Evidently data drift and data quality of a window against the reference, as figures.

One Evidently report holds both presets: ``DataDriftPreset`` (a statistical test or
distance per feature, and the share of drifted features) and ``DataSummaryPreset``
(counts, missing values, ranges and quantiles of the window). Evidently picks each
feature's method from the data, as it documents: with more than 1000 reference rows the
normed Wasserstein distance (drifted at ≥ 0.1), else the Kolmogorov–Smirnov p-value
(drifted at ≤ 0.05); a feature with five values or fewer gets a test for categories.

:class:`DriftFigures` carries what the platform decides on and stores: the drift share
(Evidently's share of drifted columns) and, per feature, the method, its score (a p-value
or a distance, as the method says), the threshold and whether it drifted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DRIFTED_COLUMNS_METRIC = "evidently:metric_v2:DriftedColumnsCount"
VALUE_DRIFT_METRIC = "evidently:metric_v2:ValueDrift"


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's drift: ``score`` is a p-value for tests (drifted below
    ``threshold``) and a distance for distances (drifted at or above it)."""

    feature: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DriftFigures:
    """The figures of one drift report."""

    drift_share: float
    """Share of the features that drifted, in [0, 1]."""
    features: tuple[FeatureDrift, ...]
    n_reference: int
    n_current: int

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def per_feature(self) -> dict[str, dict[str, Any]]:
        """``{feature: {method, score, threshold, drifted}}`` (what the history stores)."""
        return {
            f.feature: {k: v for k, v in f.as_dict().items() if k != "feature"}
            for f in self.features
        }


@dataclass(frozen=True)
class DriftReport:
    """The figures and the report as standalone HTML (scripts inlined: about 4 MB)."""

    figures: DriftFigures
    html: str

    def save_html(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    drift_share_threshold: float = 0.5,
) -> DriftReport:
    """Run Evidently's drift and data-summary presets on ``feature_names`` of ``current``
    against ``reference``.

    ``drift_share_threshold`` is the share at which the report's own summary says
    "dataset drift" (the platform's threshold, so that the HTML agrees with the event).
    Raises ``ValueError`` when either frame is empty or lacks a feature.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    names = list(feature_names)
    for role, frame in (("reference", reference), ("current", current)):
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise ValueError(f"the {role} data lacks feature(s) {', '.join(missing)}")
        if frame.empty:
            raise ValueError(f"the {role} data has no rows: nothing to compare")
    ref = reference[names].astype("float64").reset_index(drop=True)
    cur = current[names].astype("float64").reset_index(drop=True)
    definition = DataDefinition(numerical_columns=names)
    report = Report(
        [
            DataDriftPreset(columns=names, drift_share=drift_share_threshold),
            DataSummaryPreset(columns=names),
        ]
    )
    snapshot = report.run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    figures = figures_from_snapshot(snapshot.dict(), ref, cur)
    return DriftReport(figures=figures, html=snapshot.get_html_str(as_iframe=False))


def figures_from_snapshot(
    snapshot: dict[str, Any], reference: pd.DataFrame, current: pd.DataFrame
) -> DriftFigures:
    """The :class:`DriftFigures` of an Evidently snapshot's ``dict()``.

    The share and the per-feature scores, methods and thresholds are Evidently's; whether
    a feature drifted is decided by the same Evidently test on the same columns (the
    snapshot keeps scores, not decisions, and tests disagree on which side drifts).
    """
    share: float | None = None
    scores: dict[str, tuple[str, float, float]] = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"] == DRIFTED_COLUMNS_METRIC:
            share = float(metric["value"]["share"])
        elif config["type"] == VALUE_DRIFT_METRIC:
            scores[config["column"]] = (
                str(config["method"]),
                float(metric["value"]),
                float(config["threshold"]),
            )
    if share is None:
        raise ValueError("the Evidently snapshot has no DriftedColumnsCount metric")
    features = tuple(
        FeatureDrift(
            feature=name,
            method=method,
            score=score,
            threshold=threshold,
            drifted=_drifted(reference[name], current[name], threshold),
        )
        for name, (method, score, threshold) in scores.items()
    )
    return DriftFigures(
        drift_share=share,
        features=features,
        n_reference=len(reference),
        n_current=len(current),
    )


def _drifted(reference: pd.Series, current: pd.Series, threshold: float) -> bool:
    """Evidently's decision for one numerical column (the method it picks by default)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    ref, cur = reference.dropna(), current.dropna()
    test = get_stattest(ref, cur, ColumnType.Numerical, None)
    return bool(test(ref, cur, ColumnType.Numerical, threshold).drifted)
