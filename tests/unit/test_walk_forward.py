"""Walk-forward evaluation: time folds, per-fold metrics, the fold gate, the reports, and
the cache key of the training set."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.errors import DataError
from mlops.evaluation.report import decision_markdown, trigger_markdown
from mlops.evaluation.walk_forward import fold_metrics, fold_table, time_folds
from mlops.features.definition import FeatureView, Source
from mlops.features.offline import OfflineStore
from mlops.gates import GateDecision, decide, decide_folds
from mlops.specs import ModelSpec
from mlops.tags import Tags
from tasks.training.build_training_set import training_set_key


def window(rows: int = 10, seed: int = 0) -> pd.DataFrame:
    """``rows`` labelled rows one hour apart, shuffled (folds must sort them)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2026-01-01", periods=rows, freq="h", tz="UTC"),
            "y": np.arange(rows) % 2,
            "x": rng.normal(size=rows),
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


# --- time folds ---------------------------------------------------------------------


def test_folds_are_consecutive_ordered_and_cover_every_row_once() -> None:
    frame = window(10)
    folds = time_folds(frame, timestamp="ts", folds=3)
    assert [f.index for f in folds] == [1, 2, 3]
    assert [f.rows for f in folds] == [4, 3, 3]
    for earlier, later in itertools.pairwise(folds):
        assert earlier.end < later.start
    for fold in folds:
        assert fold.frame["ts"].is_monotonic_increasing
        assert (fold.start, fold.end) == (fold.frame["ts"].iloc[0], fold.frame["ts"].iloc[-1])
    joined = pd.concat([f.frame for f in folds], ignore_index=True)
    expected = frame.sort_values("ts").reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, expected)


def test_one_fold_is_the_whole_window() -> None:
    frame = window(7)
    (only,) = time_folds(frame, timestamp="ts", folds=1)
    assert only.rows == 7
    assert only.start == frame["ts"].min() and only.end == frame["ts"].max()


def test_folds_refuse_bad_requests_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="folds must be at least 1, got 0"):
        time_folds(window(5), timestamp="ts", folds=0)
    with pytest.raises(DataError, match="has 2 rows, too few for 3 folds"):
        time_folds(window(2), timestamp="ts", folds=3)
    with pytest.raises(DataError, match="no timestamp column 'when'"):
        time_folds(window(5), timestamp="when", folds=2)


def test_fold_metrics_score_each_fold_on_its_own_rows() -> None:
    folds = time_folds(window(12), timestamp="ts", folds=3)
    labels = np.concatenate([f.frame["y"].to_numpy() for f in folds])
    # perfect on fold 1, inverted on fold 2, perfect on fold 3
    p = labels.astype(float).copy()
    p[4:8] = 1.0 - p[4:8]
    metrics = fold_metrics(folds, "y", p)
    assert [m["roc_auc"] for m in metrics] == [1.0, 0.0, 1.0]
    assert [m["rows"] for m in metrics] == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="11 predictions for 12 rows in 3 folds"):
        fold_metrics(folds, "y", p[:-1])


def test_fold_table_puts_both_models_side_by_side() -> None:
    folds = time_folds(window(8), timestamp="ts", folds=2)
    ours = [{"roc_auc": 0.9, "pr_auc": 0.5, "log_loss": 0.3}] * 2
    theirs = [
        {"roc_auc": 0.8, "pr_auc": 0.4, "log_loss": 0.4},
        {"roc_auc": math.nan, "pr_auc": math.nan, "log_loss": 0.5},
    ]
    rows = fold_table(folds, ours, theirs, "y")
    assert rows[0]["fold"] == 1 and rows[0]["rows"] == 4 and rows[0]["positives"] == 2
    assert rows[0]["challenger_roc_auc"] == 0.9 and rows[0]["champion_roc_auc"] == 0.8
    assert rows[0]["roc_auc_change"] == pytest.approx(0.1)
    assert rows[1]["champion_roc_auc"] is None and rows[1]["roc_auc_change"] is None
    assert rows[0]["start"] == folds[0].start.isoformat()
    alone = fold_table(folds, ours, None, "y")
    assert alone[0]["champion_roc_auc"] is None and alone[0]["challenger_pr_auc"] == 0.5


# --- the walk-forward gate ----------------------------------------------------------


def gate(ours: list[float], theirs: list[float] | None, minimum: float = 0.8) -> GateDecision:
    return decide_folds(
        challenger_roc_auc=ours, champion_roc_auc=theirs, min_roc_auc=minimum, max_regression=0.01
    )


def test_one_fold_decides_exactly_like_the_single_gate() -> None:
    for ours, theirs in [(0.9, None), (0.7, None), (0.9, 0.95), (0.95, 0.9)]:
        folded = gate([ours], None if theirs is None else [theirs])
        single = decide(
            challenger_roc_auc=ours, champion_roc_auc=theirs, min_roc_auc=0.8, max_regression=0.01
        )
        assert (folded.promote, folded.reason) == (single.promote, single.reason)
    assert gate([0.9], [0.95]).folds_worse == 1


def test_mean_below_minimum_is_rejected_and_says_so() -> None:
    d = gate([0.85, 0.70, 0.75], None)
    assert d.promote is False
    assert d.challenger_roc_auc == pytest.approx(0.7667, abs=1e-4)
    assert d.reason == (
        "3-fold walk-forward, means over the folds: ROC AUC 0.7667 is below the minimum 0.8000"
    )


def test_without_champion_a_good_mean_promotes() -> None:
    d = gate([0.85, 0.9, 0.95], None)
    assert d.promote is True
    assert "no champion yet and ROC AUC 0.9000" in d.reason
    assert (d.folds_compared, d.folds_worse) == (0, 0)


def test_better_mean_but_worse_on_most_folds_is_rejected() -> None:
    # one big win hides two clear losses: the mean passes, the majority rule does not
    d = gate([0.99, 0.86, 0.86], [0.80, 0.90, 0.90])
    assert d.challenger_roc_auc > (d.champion_roc_auc or 0)
    assert d.promote is False
    assert d.folds_worse == 2 and d.folds_compared == 3
    assert "worse than the champion by more than 0.0100 on 2 of 3 folds" in d.reason
    assert "fold 2: 0.8600 vs 0.9000, fold 3: 0.8600 vs 0.9000" in d.reason


def test_worse_on_a_minority_of_folds_promotes_and_names_them() -> None:
    d = gate([0.95, 0.86, 0.95], [0.90, 0.90, 0.90])
    assert d.promote is True
    assert d.reason.endswith("worse on 1 of 3 folds (fold 2: 0.8600 vs 0.9000)")


def test_mean_regression_beyond_allowance_is_rejected() -> None:
    d = gate([0.88, 0.885, 0.95], [0.90, 0.90, 0.96])
    assert d.promote is False
    assert "below the champion's" in d.reason and "allowed regression 0.0100" in d.reason


def test_folds_with_undefined_auc_are_left_out_and_named() -> None:
    d = gate([0.9, math.nan, 0.92], [0.91, math.nan, 0.9])
    assert d.promote is True
    assert d.folds_compared == 2
    assert d.challenger_roc_auc == pytest.approx(0.91)
    assert d.reason.startswith("3-fold walk-forward (fold 2 left out: ROC AUC undefined)")
    assert gate([math.nan, math.nan], None).promote is False


def test_fold_gate_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="3 challenger folds but 2 champion folds"):
        gate([0.9, 0.9, 0.9], [0.9, 0.9])
    with pytest.raises(ValueError, match="at least one fold"):
        gate([], None)


def test_fold_tags_summarise_every_fold() -> None:
    tags = gate([0.95, 0.86, 0.95], [0.9, 0.9, 0.9]).tags()
    assert tags[Tags.GATE_DECISION] == "promoted"
    assert tags[Tags.GATE_FOLDS] == "3"
    assert tags[Tags.GATE_FOLD_ROC_AUC] == "0.95,0.86,0.95"
    assert tags[Tags.GATE_CHAMPION_FOLD_ROC_AUC] == "0.9,0.9,0.9"
    assert tags[Tags.GATE_FOLDS_WORSE] == "1/3"
    assert tags[Tags.GATE_ROC_AUC] == "0.92"  # the mean
    assert gate([0.9, 0.9], None).tags()[Tags.GATE_CHAMPION_FOLD_ROC_AUC] == ""


# --- reports ------------------------------------------------------------------------


def test_trigger_report_explains_the_event_and_lists_its_figures() -> None:
    text = trigger_markdown(
        "fraud_detector",
        "mlops.model.drift-detected",
        {"drift_share": 0.5, "threshold": 0.3, "drifted": ["amount", "a|b"]},
    )
    assert text.startswith("# Why fraud_detector is being retrained")
    assert "the monitor found drift" in text
    assert "| drift_share | 0.5 |" in text
    assert '| drifted | ["amount", "a\\|b"] |' in text
    assert "not started by an event" in trigger_markdown("m", "schedule", None)


def test_decision_report_gives_verdict_versions_and_folds() -> None:
    text = decision_markdown(
        model="m",
        reason="manual",
        challenger_version="3",
        champion_before="2",
        champion_after="2",
        promoted=False,
        gate_reason="ROC AUC 0.7 is below the minimum 0.75",
        folds=[{"fold": 1, "start": "a", "end": "b", "rows": 5, "challenger_roc_auc": 0.7}],
    )
    assert text.startswith("# m v3: NOT PROMOTED")
    assert "- champion now: version 2" in text
    assert "**Gate:** ROC AUC 0.7 is below the minimum 0.75" in text
    assert "| 1 | a → b | 5 | 0.7 |" in text


# --- the training set's cache key ---------------------------------------------------


def model_with(view: FeatureView) -> ModelSpec:
    return ModelSpec(
        name="m",
        views=(view,),
        labels=Source(path=Path("labels.parquet")),
        entity="card_id",
        timestamp="ts",
        label="y",
    )


def key(spec: ModelSpec, root: Path, labels: pd.DataFrame) -> str:
    parameters: dict[str, Any] = {"spec": spec, "offline_root": root, "labels": labels}
    return training_set_key(None, parameters)  # type: ignore[arg-type]  # the context is unused


def test_training_set_key_follows_every_input(
    tmp_path: Path, view_factory: Callable[..., FeatureView]
) -> None:
    view = view_factory()
    store = OfflineStore(tmp_path)
    rows = pd.DataFrame(
        {
            "card_id": ["a", "b"],
            "ts": pd.to_datetime(["2026-01-01 10:00", "2026-01-02 10:00"], utc=True),
            "amount": [1.0, 2.0],
        }
    )
    store.write(view, rows, [date(2026, 1, 1), date(2026, 1, 2)])
    labels = rows[["card_id", "ts"]].assign(y=[0, 1])
    spec = model_with(view)

    first = key(spec, tmp_path, labels)
    assert first == key(spec, tmp_path, labels.copy())  # same inputs, same key
    assert len(first) == 64

    flipped = labels.assign(y=[1, 1])
    assert key(spec, tmp_path, flipped) != first  # other labels (same window)
    assert key(spec, tmp_path, labels.iloc[:1]) != first  # a narrower window
    other_view = view_factory(features=("amount", "is_online"))
    assert key(model_with(other_view), tmp_path, labels) != first  # another view version

    store.write(view, rows.assign(amount=[1.0, 2.5]), [date(2026, 1, 2)])
    assert key(spec, tmp_path, labels) != first  # a day materialized again
