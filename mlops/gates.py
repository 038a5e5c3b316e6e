"""Quality gates: whether a challenger may replace the champion, and why.

:func:`decide` judges one evaluation (a single holdout); :func:`decide_folds` judges a
walk-forward evaluation (consecutive time folds) and, with one fold, is :func:`decide`.
Every decision carries its reason in words and the figures it was made from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    # walk-forward: each fold's ROC AUC, oldest first (empty for a single evaluation)
    fold_roc_auc: tuple[float, ...] = ()
    champion_fold_roc_auc: tuple[float, ...] | None = None
    folds_compared: int = 0  # folds where both models have a defined ROC AUC
    folds_worse: int = 0  # of those, folds where the challenger regressed beyond the allowance

    def tags(self) -> dict[str, str]:
        """The decision as model version tags (walk-forward tags only when there are folds)."""
        tags = {
            Tags.GATE_DECISION: "promoted" if self.promote else "rejected",
            Tags.GATE_REASON: self.reason,
            Tags.GATE_ROC_AUC: f"{self.challenger_roc_auc:.6g}",
            Tags.GATE_CHAMPION_ROC_AUC: (
                "" if self.champion_roc_auc is None else f"{self.champion_roc_auc:.6g}"
            ),
            Tags.GATE_MIN_ROC_AUC: f"{self.min_roc_auc:g}",
            Tags.GATE_MAX_REGRESSION: f"{self.max_regression:g}",
        }
        if self.fold_roc_auc:
            tags |= {
                Tags.GATE_FOLDS: str(len(self.fold_roc_auc)),
                Tags.GATE_FOLD_ROC_AUC: _joined(self.fold_roc_auc),
                Tags.GATE_CHAMPION_FOLD_ROC_AUC: (
                    ""
                    if self.champion_fold_roc_auc is None
                    else _joined(self.champion_fold_roc_auc)
                ),
                Tags.GATE_FOLDS_WORSE: f"{self.folds_worse}/{self.folds_compared}",
            }
        return tags


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:.6g}" for v in values)


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


def decide_folds(
    *,
    challenger_roc_auc: Sequence[float],
    champion_roc_auc: Sequence[float] | None,
    min_roc_auc: float,
    max_regression: float,
) -> GateDecision:
    """The walk-forward gate: ROC AUC per consecutive time fold, oldest first.

    A fold where a model's ROC AUC is undefined (the fold holds one class only) is left
    out of the comparison. Over the remaining folds the challenger is promoted when

    1. its mean ROC AUC reaches ``min_roc_auc`` (without a champion, that is enough);
    2. its mean is at most ``max_regression`` below the champion's mean over the same folds;
    3. it is not *worse* on a strict majority of those folds, worse meaning more than
       ``max_regression`` below the champion on that fold: a model that wins on average
       by one lucky fold but loses most of the window is not promoted.

    With one fold this is exactly :func:`decide` on that fold. The reason says which
    rule decided, with the means and the folds it lost.
    """
    ours = tuple(float(v) for v in challenger_roc_auc)
    theirs = None if champion_roc_auc is None else tuple(float(v) for v in champion_roc_auc)
    n = len(ours)
    if n == 0:
        raise ValueError("decide_folds needs the ROC AUC of at least one fold")
    if theirs is not None and len(theirs) != n:
        raise ValueError(f"{n} challenger folds but {len(theirs)} champion folds")
    if n == 1:
        single = decide(
            challenger_roc_auc=ours[0],
            champion_roc_auc=None if theirs is None else theirs[0],
            min_roc_auc=min_roc_auc,
            max_regression=max_regression,
        )
        compared = int(theirs is not None and not (math.isnan(ours[0]) or math.isnan(theirs[0])))
        worse = int(compared == 1 and theirs is not None and _worse(ours[0], theirs[0], single))
        return replace(
            single,
            fold_roc_auc=ours,
            champion_fold_roc_auc=theirs,
            folds_compared=compared,
            folds_worse=worse,
        )

    defined = [i for i in range(n) if not math.isnan(ours[i])]
    both = [i for i in defined if theirs is not None and not math.isnan(theirs[i])]
    used = both or defined
    mean = _mean([ours[i] for i in used])
    champion_mean = None if theirs is None else _mean([theirs[i] for i in both])
    base = decide(
        challenger_roc_auc=mean,
        champion_roc_auc=champion_mean,
        min_roc_auc=min_roc_auc,
        max_regression=max_regression,
    )
    lost = [i for i in both if theirs is not None and _worse(ours[i], theirs[i], base)]
    left_out = [i + 1 for i in range(n) if i not in used]
    scope = f"{n}-fold walk-forward"
    if left_out:
        scope += f" (fold {', '.join(map(str, left_out))} left out: ROC AUC undefined)"
    reason = f"{scope}, means over the folds: {base.reason}"
    promote = base.promote
    if theirs is not None and both:
        detail = ", ".join(f"fold {i + 1}: {ours[i]:.4f} vs {theirs[i]:.4f}" for i in lost)
        if promote and len(lost) * 2 > len(both):
            promote = False
            reason = (
                f"{scope}: worse than the champion by more than {max_regression:.4f} on "
                f"{len(lost)} of {len(both)} folds ({detail}), although on the means "
                f"{base.reason}"
            )
        else:
            reason += f"; worse on {len(lost)} of {len(both)} folds" + (
                f" ({detail})" if lost else ""
            )
    return GateDecision(
        promote,
        reason,
        mean,
        champion_mean,
        min_roc_auc,
        max_regression,
        fold_roc_auc=ours,
        champion_fold_roc_auc=theirs,
        folds_compared=len(both),
        folds_worse=len(lost),
    )


def _worse(challenger: float, champion: float, decision: GateDecision) -> bool:
    """The challenger lost this fold: more than the allowed regression below the champion."""
    return champion - challenger > decision.max_regression + _EPSILON


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")
