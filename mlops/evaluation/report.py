"""Markdown reports of the retrain flow: why it ran, and what was decided and why."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlops.events import MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED

SCHEDULE = "schedule"
MANUAL = "manual"

TRIGGERS: dict[str, str] = {
    MODEL_DRIFT_DETECTED: "the monitor found drift between the served features and the "
    "training data",
    MODEL_PERFORMANCE_DEGRADED: "the monitor found the live accuracy (from feedback labels) "
    "below its threshold",
    SCHEDULE: "the retraining schedule came round",
    MANUAL: "someone started it by hand",
}
"""The reasons a retraining may have, in words."""


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def trigger_markdown(model: str, reason: str, payload: Mapping[str, Any] | None) -> str:
    """Why ``model`` is being retrained: the reason in words and the event's payload
    (its figures and thresholds) as a table."""
    lines = [
        f"# Why {model} is being retrained",
        "",
        f"**Reason:** `{reason}`: {TRIGGERS.get(reason, 'an unlisted reason')}.",
        "",
    ]
    if payload:
        rows = [{"field": key, "value": value} for key, value in payload.items()]
        lines += ["## The event's figures", "", _table(rows)]
    else:
        lines.append("No event payload: the run was not started by an event.")
    return "\n".join(lines) + "\n"


def decision_markdown(
    *,
    model: str,
    reason: str,
    challenger_version: str,
    champion_before: str | None,
    champion_after: str | None,
    promoted: bool,
    gate_reason: str,
    folds: Sequence[Mapping[str, Any]],
) -> str:
    """What the retraining decided: the versions, the verdict with the gate's reason in
    words, and the per-fold ROC AUC of challenger and champion."""
    verdict = "PROMOTED" if promoted else "NOT PROMOTED"
    lines = [
        f"# {model} v{challenger_version}: {verdict}",
        "",
        f"- retrained because: `{reason}` ({TRIGGERS.get(reason, 'an unlisted reason')})",
        f"- challenger: version {challenger_version}",
        f"- champion before: {'version ' + champion_before if champion_before else 'none'}",
        f"- champion now: {'version ' + champion_after if champion_after else 'none'}",
        "",
        f"**Gate:** {gate_reason}",
        "",
    ]
    if folds:
        lines += [
            "## ROC AUC per time fold (oldest first)",
            "",
            _table(
                [
                    {
                        "fold": f.get("fold"),
                        "window": f"{f.get('start')} → {f.get('end')}",
                        "rows": f.get("rows"),
                        "challenger": f.get("challenger_roc_auc"),
                        "champion": f.get("champion_roc_auc"),
                        "change": f.get("roc_auc_change"),
                    }
                    for f in folds
                ]
            ),
        ]
    return "\n".join(lines) + "\n"
