"""Monitoring figures and decisions on synthetic frames: window, reference, drift, judge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pytest

from mlops import events
from mlops.errors import DataError, SchemaError
from mlops.monitoring.drift import DriftFigures, FeatureDrift, drift_report
from mlops.monitoring.judge import LiveAccuracy, Thresholds, event_payload, judge, live_accuracy
from mlops.monitoring.reference import reference_frame
from mlops.monitoring.window import LABEL, PREDICTED, PROBABILITY, window_frame
from mlops.serving.request_log import FeedbackRecord, PredictionRecord

FEATURES = ["amount", "distance_km", "count_1h"]
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _record(
    request_id: str, matrix: np.ndarray | None, labels: list[int], *, as_text: bool = False
) -> PredictionRecord:
    outputs = [
        {"entity": None, "index": i, "label": label, "probability": 0.9 if label else 0.1}
        for i, label in enumerate(labels)
    ]
    return PredictionRecord(
        request_id=request_id,
        received_at=T0,
        model_name="m",
        model_version="3",
        inputs={},
        outputs=orjson.dumps(outputs) if as_text else outputs,
        latency_ms=1.0,
        n_rows=len(labels),
        features=None if matrix is None else matrix.astype("<f4").tobytes(),
    )


def _normal(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.normal(50.0, 30.0, n),
            "distance_km": rng.normal(10.0, 4.0, n),
            "count_1h": rng.normal(2.0, 1.5, n),
        }
    )
    for column, by in (shift or {}).items():
        frame[column] += by
    return frame


# --- the window -------------------------------------------------------------------------


def test_window_frame_lines_up_features_predictions_and_feedback() -> None:
    one = _record("a", np.array([[1, 2, 3], [4, 5, 6]]), [1, 0], as_text=True)
    two = _record("b", np.array([[7, 8, 9]]), [0])
    old = _record("old", None, [1])  # logged before the features column: left out
    feedback = [
        FeedbackRecord("a", 1, 1, T0 + timedelta(hours=1)),
        FeedbackRecord("b", 0, 0, T0),
        FeedbackRecord("old", 0, 1, T0),
    ]
    frame = window_frame([one, old, two], FEATURES, feedback)
    assert list(frame["request_id"]) == ["a", "a", "b"]
    assert list(frame["row"]) == [0, 1, 0]
    np.testing.assert_array_equal(frame[FEATURES].to_numpy(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert frame[FEATURES].dtypes.eq("float64").all()
    assert list(frame[PREDICTED]) == [1, 0, 0]
    assert list(frame[PROBABILITY]) == [0.9, 0.1, 0.1]
    assert frame[LABEL].tolist() == [pd.NA, 1, 0]
    assert str(frame["received_at"].dt.tz) == "UTC"


def test_window_frame_of_nothing_has_the_columns() -> None:
    frame = window_frame([], FEATURES)
    assert frame.empty
    assert set(FEATURES) <= set(frame.columns) and LABEL in frame.columns
    assert live_accuracy(frame) == LiveAccuracy(accuracy=None, n_labelled=0)


def test_window_frame_refuses_features_that_do_not_match_the_rows() -> None:
    with pytest.raises(DataError, match="2 rows of logged features but 1 logged predictions"):
        window_frame([_record("a", np.zeros((2, 3)), [1])], FEATURES)
    with pytest.raises(DataError, match="6 logged feature values are not rows of 4"):
        window_frame([_record("a", np.zeros((2, 3)), [1, 0])], [*FEATURES, "extra"])


# --- the reference ----------------------------------------------------------------------


def test_reference_is_a_deterministic_capped_sample_of_the_features() -> None:
    holdout = _normal(300, seed=1).assign(card_id="c", is_fraud=0)
    first = reference_frame(holdout, FEATURES, 100)
    again = reference_frame(holdout, FEATURES, 100)
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == FEATURES and len(first) == 100
    assert list(first.index) == list(range(100))
    assert set(first["amount"]) <= set(holdout["amount"])
    whole = reference_frame(holdout, FEATURES, 1000)
    pd.testing.assert_frame_equal(whole, holdout[FEATURES].reset_index(drop=True))


def test_reference_names_the_missing_features() -> None:
    with pytest.raises(SchemaError, match="lacks feature\\(s\\) count_1h"):
        reference_frame(_normal(10, 0).drop(columns="count_1h"), FEATURES, 10)


# --- drift ------------------------------------------------------------------------------


def test_no_drift_gives_a_share_of_zero() -> None:
    report = drift_report(_normal(3000, seed=1), _normal(2000, seed=2), FEATURES)
    figures = report.figures
    assert figures.drift_share == 0.0
    assert figures.drifted_features == []
    assert [f.feature for f in figures.features] == FEATURES
    for feature in figures.features:  # > 1000 reference rows: Evidently's normed Wasserstein
        assert feature.method == "Wasserstein distance (normed)"
        assert feature.threshold == 0.1
        assert 0 <= feature.score < 0.1
    assert (figures.n_reference, figures.n_current) == (3000, 2000)
    assert "<html" in report.html.lower() and len(report.html) > 10_000


def test_a_feature_shifted_by_several_std_is_the_one_that_drifted() -> None:
    current = _normal(2000, seed=2, shift={"amount": 4 * 30.0})
    figures = drift_report(_normal(3000, seed=1), current, FEATURES).figures
    assert figures.drifted_features == ["amount"]
    assert figures.drift_share == pytest.approx(1 / 3)
    by_name = {f.feature: f for f in figures.features}
    assert by_name["amount"].score > 1.0  # about 4 std, in units of the reference's std
    assert figures.per_feature()["amount"]["drifted"] is True
    assert figures.per_feature()["distance_km"]["drifted"] is False


def test_a_small_reference_uses_p_values_and_they_decide_the_other_way() -> None:
    current = _normal(400, seed=4, shift={"count_1h": 3 * 1.5, "distance_km": 3 * 4.0})
    figures = drift_report(_normal(800, seed=3), current, FEATURES).figures
    by_name = {f.feature: f for f in figures.features}
    assert by_name["count_1h"].method == "K-S p_value"
    assert by_name["count_1h"].score < 0.05 and by_name["count_1h"].drifted
    assert by_name["amount"].score > 0.05 and not by_name["amount"].drifted
    assert figures.drifted_features == ["distance_km", "count_1h"]
    assert figures.drift_share == pytest.approx(2 / 3)


def test_drift_report_refuses_empty_or_incomplete_data() -> None:
    with pytest.raises(ValueError, match="the current data has no rows"):
        drift_report(_normal(50, 1), _normal(0, 2), FEATURES)
    with pytest.raises(ValueError, match="the reference data lacks feature\\(s\\) amount"):
        drift_report(_normal(50, 1).drop(columns="amount"), _normal(50, 2), FEATURES)


# --- live accuracy and the decisions ----------------------------------------------------


def test_live_accuracy_counts_only_labelled_rows() -> None:
    frame = pd.DataFrame(
        {
            PREDICTED: [1, 0, 1, 0, 1],
            LABEL: pd.array([1, 1, None, 0, 0], dtype="Int64"),
        }
    )
    assert live_accuracy(frame) == LiveAccuracy(accuracy=0.5, n_labelled=4)
    assert live_accuracy(frame.iloc[[2]]) == LiveAccuracy(accuracy=None, n_labelled=0)
    assert live_accuracy(frame.iloc[[0]]) == LiveAccuracy(accuracy=1.0, n_labelled=1)


THRESHOLDS = Thresholds(drift_share_threshold=0.3, min_live_accuracy=0.8, min_rows=200)


def test_judge_emits_drift_at_the_threshold_and_degradation_below_the_minimum() -> None:
    ok = judge(n_rows=500, drift_share=0.29, accuracy=LiveAccuracy(0.8, 50), thresholds=THRESHOLDS)
    assert ok.drift_judged and not ok.drift_detected and not ok.performance_degraded
    assert ok.events == []
    assert ok.reasons == [
        "drift share 0.290 < threshold 0.300",
        "live accuracy 0.800 on 50 labelled rows ≥ minimum 0.800",
    ]
    bad = judge(n_rows=500, drift_share=0.3, accuracy=LiveAccuracy(0.79, 50), thresholds=THRESHOLDS)
    assert bad.events == [events.MODEL_DRIFT_DETECTED, events.MODEL_PERFORMANCE_DEGRADED]


def test_too_few_rows_judge_no_drift_but_still_the_accuracy() -> None:
    result = judge(
        n_rows=199, drift_share=None, accuracy=LiveAccuracy(0.5, 10), thresholds=THRESHOLDS
    )
    assert not result.drift_judged and not result.drift_detected
    assert result.events == [events.MODEL_PERFORMANCE_DEGRADED]
    assert result.reasons[0] == "drift not judged: 199 rows in the window, fewer than 200"
    # a share computed on too few rows is not judged either
    assert (
        judge(
            n_rows=10, drift_share=1.0, accuracy=LiveAccuracy(None, 0), thresholds=THRESHOLDS
        ).events
        == []
    )


def test_without_labels_nothing_is_said_about_accuracy() -> None:
    result = judge(
        n_rows=300, drift_share=0.0, accuracy=LiveAccuracy(None, 0), thresholds=THRESHOLDS
    )
    assert result.events == []
    assert "live accuracy unknown: no feedback labels in the window" in result.reasons


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drift_share_threshold": 0.0}, "drift_share_threshold must be in \\(0, 1\\]"),
        ({"min_live_accuracy": 1.5}, "min_live_accuracy must be in \\[0, 1\\]"),
        ({"min_rows": 0}, "min_rows must be at least 1"),
    ],
)
def test_thresholds_refuse_values_that_cannot_work(kwargs: dict[str, float], message: str) -> None:
    values = {"drift_share_threshold": 0.3, "min_live_accuracy": 0.8, "min_rows": 200} | kwargs
    with pytest.raises(ValueError, match=message):
        Thresholds(**values)  # type: ignore[arg-type]


def test_event_payload_carries_figures_thresholds_and_window() -> None:
    figures = DriftFigures(
        drift_share=0.5,
        features=(FeatureDrift("a", "K-S p_value", 0.001, 0.05, True),),
        n_reference=10,
        n_current=10,
    )
    payload = event_payload(
        model_version="3",
        window_start="2026-03-01T00:00:00+00:00",
        window_end="2026-03-02T00:00:00+00:00",
        n_rows=10,
        drift_share=figures.drift_share,
        drifted_features=figures.drifted_features,
        accuracy=LiveAccuracy(0.75, 4),
        thresholds=THRESHOLDS,
        report_uri="file:///r.html",
    )
    assert payload == {
        "model_version": "3",
        "window_start": "2026-03-01T00:00:00+00:00",
        "window_end": "2026-03-02T00:00:00+00:00",
        "n_rows": 10,
        "drift_share": 0.5,
        "drift_share_threshold": 0.3,
        "drifted_features": ["a"],
        "live_accuracy": 0.75,
        "min_live_accuracy": 0.8,
        "n_labelled": 4,
        "min_rows": 200,
        "report_uri": "file:///r.html",
    }
    orjson.dumps(payload)  # an event payload must be JSON
