"""Quality gates: every branch of decide(), and the tags recorded on the version."""

from __future__ import annotations

import math

import pytest

from mlops.gates import GateDecision, decide


def gate(
    challenger: float, champion: float | None, minimum: float = 0.8, regression: float = 0.01
) -> GateDecision:
    return decide(
        challenger_roc_auc=challenger,
        champion_roc_auc=champion,
        min_roc_auc=minimum,
        max_regression=regression,
    )


def test_below_minimum_is_rejected_even_without_champion() -> None:
    d = gate(0.75, None, minimum=0.8)
    assert d.promote is False
    assert d.reason == "ROC AUC 0.7500 is below the minimum 0.8000"


def test_below_minimum_is_rejected_even_when_better_than_champion() -> None:
    d = gate(0.79, 0.6, minimum=0.8)
    assert d.promote is False
    assert "0.7900" in d.reason and "below the minimum 0.8000" in d.reason


def test_nan_auc_is_rejected() -> None:
    d = gate(float("nan"), None, minimum=0.0)
    assert d.promote is False
    assert "nan" in d.reason and "below the minimum 0.0000" in d.reason
    assert math.isnan(d.challenger_roc_auc)
    assert gate(float("nan"), 0.9).promote is False


def test_no_champion_promotes() -> None:
    d = gate(0.85, None, minimum=0.8)
    assert d.promote is True
    assert d.reason == "no champion yet and ROC AUC 0.8500 ≥ minimum 0.8000"
    assert d.champion_roc_auc is None


def test_exactly_the_minimum_promotes() -> None:
    assert gate(0.75, None, minimum=0.75).promote is True


def test_regression_beyond_allowed_is_rejected() -> None:
    d = gate(0.85, 0.90, regression=0.02)
    assert d.promote is False
    assert d.reason == (
        "ROC AUC 0.8500 is 0.0500 below the champion's 0.9000 (allowed regression 0.0200)"
    )


def test_regression_within_allowed_promotes() -> None:
    d = gate(0.895, 0.90, regression=0.01)
    assert d.promote is True
    assert d.reason == (
        "ROC AUC 0.8950 vs champion 0.9000 (change -0.0050, allowed regression 0.0100)"
    )


def test_regression_exactly_allowed_promotes() -> None:
    # values exact in binary floating point: the regression is exactly the allowance
    d = gate(0.75, 1.0, minimum=0.5, regression=0.25)
    assert d.promote is True
    assert "change -0.2500" in d.reason


def test_improvement_promotes() -> None:
    d = gate(0.93, 0.90)
    assert d.promote is True
    assert "change +0.0300" in d.reason
    assert "vs champion 0.9000" in d.reason


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (0.80, None, True),
        (0.95, 0.90, True),
        (0.905, 0.91, True),
        (0.89, 0.91, False),
        (0.70, None, False),
    ],
)
def test_decision_table(challenger: float, champion: float | None, promote: bool) -> None:
    assert gate(challenger, champion, minimum=0.8, regression=0.01).promote is promote


def test_tags_promoted() -> None:
    d = gate(0.912345678, 0.9, minimum=0.8, regression=0.01)
    assert d.tags() == {
        "gate.decision": "promoted",
        "gate.reason": d.reason,
        "gate.roc_auc": "0.912346",
        "gate.champion_roc_auc": "0.9",
        "gate.min_roc_auc": "0.8",
        "gate.max_regression": "0.01",
    }


def test_tags_rejected_without_champion() -> None:
    tags = gate(0.5, None).tags()
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.champion_roc_auc"] == ""
    assert tags["gate.roc_auc"] == "0.5"
    assert "below the minimum" in tags["gate.reason"]
    assert all(isinstance(v, str) for v in tags.values())


def test_decision_records_its_inputs() -> None:
    d = gate(0.9, 0.88, minimum=0.7, regression=0.05)
    assert (d.challenger_roc_auc, d.champion_roc_auc, d.min_roc_auc, d.max_regression) == (
        0.9,
        0.88,
        0.7,
        0.05,
    )
    with pytest.raises(AttributeError):
        d.promote = False  # type: ignore[misc]
