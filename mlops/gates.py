"""Quality gates: whether a challenger may replace the champion, and why."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlops.tags import Tags

# float noise: 0.90 - 0.88 is 0.0200000000000000018, which must not exceed 0.02
_EPSILON = 1e-9


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger_roc_auc: float
    champion_roc_auc: float | None
    min_roc_auc: float
    max_regression: float

    def tags(self) -> dict[str, str]:
        return {
            Tags.GATE_DECISION: "promoted" if self.promote else "rejected",
            Tags.GATE_REASON: self.reason,
            Tags.GATE_ROC_AUC: f"{self.challenger_roc_auc:.6g}",
            Tags.GATE_CHAMPION_ROC_AUC: (
                "" if self.champion_roc_auc is None else f"{self.champion_roc_auc:.6g}"
            ),
            Tags.GATE_MIN_ROC_AUC: f"{self.min_roc_auc:g}",
            Tags.GATE_MAX_REGRESSION: f"{self.max_regression:g}",
        }


def decide(
    *,
    challenger_roc_auc: float,
    champion_roc_auc: float | None,
    min_roc_auc: float,
    max_regression: float,
) -> GateDecision:
    """Promote when the challenger reaches ``min_roc_auc`` and, if a champion exists, loses
    at most ``max_regression`` ROC AUC against it on the same holdout."""

    def verdict(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote, reason, challenger_roc_auc, champion_roc_auc, min_roc_auc, max_regression
        )

    if math.isnan(challenger_roc_auc) or challenger_roc_auc < min_roc_auc:
        return verdict(
            False, f"ROC AUC {challenger_roc_auc:.4f} is below the minimum {min_roc_auc:.4f}"
        )
    if champion_roc_auc is None:
        return verdict(
            True,
            f"no champion yet and ROC AUC {challenger_roc_auc:.4f} ≥ minimum {min_roc_auc:.4f}",
        )
    if math.isnan(champion_roc_auc):
        return verdict(
            True,
            f"the champion's ROC AUC on this holdout is undefined; ROC AUC "
            f"{challenger_roc_auc:.4f} ≥ minimum {min_roc_auc:.4f}",
        )
    regression = champion_roc_auc - challenger_roc_auc
    if regression > max_regression + _EPSILON:
        return verdict(
            False,
            f"ROC AUC {challenger_roc_auc:.4f} is {regression:.4f} below the champion's "
            f"{champion_roc_auc:.4f} (allowed regression {max_regression:.4f})",
        )
    return verdict(
        True,
        f"ROC AUC {challenger_roc_auc:.4f} vs champion {champion_roc_auc:.4f} "
        f"(change {-regression:+.4f}, allowed regression {max_regression:.4f})",
    )
