"""Feature views declared in code.

A :class:`FeatureView` names an entity key, a timestamp column, a source table and the
features computed from it: plain columns passed through, and per-entity rolling-window
aggregates (``count``/``sum``/``mean``/``min``/``max`` over a trailing window that ends at,
and includes, the row's own timestamp). Its :attr:`~FeatureView.version` is a hash of the
definition, so changing a feature makes a new version.

``created_timestamp`` optionally names the column that says when each event reached the
source (late-arriving data): a feature row then counts in point-in-time joins only from
that time, never from its earlier event time.

The source path is not part of the version: the same definition read from another folder
or bucket computes the same features.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from mlops.errors import FeatureViewError

AggFunction = Literal["count", "sum", "mean", "min", "max"]
_FUNCTIONS = ("count", "sum", "mean", "min", "max")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def window_label(window: timedelta) -> str:
    """``1h``, ``24h``, ``7d``, ``90m``: the shortest exact label of a window."""
    seconds = int(window.total_seconds())
    if seconds <= 0 or seconds != window.total_seconds():
        raise FeatureViewError(f"window must be a positive whole number of seconds: {window}")
    if seconds % 86_400 == 0 and seconds > 86_400:
        return f"{seconds // 86_400}d"
    for unit, size in (("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Aggregation:
    """``function`` of ``column`` over the trailing ``window`` of each entity's events."""

    column: str
    function: AggFunction
    window: timedelta
    name: str | None = None

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        subject = "events" if self.function == "count" else self.column
        return f"{subject}_{self.function}_{window_label(self.window)}"


@dataclass(frozen=True)
class Source:
    """Where a view's raw events live: a Parquet or CSV file, or a folder of Parquet."""

    path: Path
    format: Literal["parquet", "csv"] = "parquet"

    @staticmethod
    def from_path(path: str | Path) -> Source:
        p = Path(path)
        fmt: Literal["parquet", "csv"] = "csv" if p.suffix.lower() == ".csv" else "parquet"
        return Source(path=p, format=fmt)


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: str
    timestamp: str
    source: Source
    features: tuple[str, ...] = ()
    aggregations: tuple[Aggregation, ...] = ()
    ttl: timedelta = timedelta(days=7)
    description: str = ""
    owner: str = ""
    created_timestamp: str | None = None
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    # --- identity -------------------------------------------------------------------
    def definition(self) -> dict[str, object]:
        """The part of the view that decides its values (what the version hashes)."""
        out: dict[str, object] = {
            "name": self.name,
            "entity": self.entity,
            "timestamp": self.timestamp,
            "features": list(self.features),
            "aggregations": [
                {
                    "column": a.column,
                    "function": a.function,
                    "window_s": int(a.window.total_seconds()),
                    "name": a.feature_name,
                }
                for a in self.aggregations
            ],
            "ttl_s": int(self.ttl.total_seconds()),
        }
        if self.created_timestamp:
            # Only when set, so views without one keep the versions they had.
            out["created_timestamp"] = self.created_timestamp
        return out

    @property
    def version(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        """``name@version``: how models record the views they were trained on."""
        return f"{self.name}@{self.version}"

    @property
    def feature_names(self) -> list[str]:
        return [*self.features, *(a.feature_name for a in self.aggregations)]

    @property
    def source_columns(self) -> list[str]:
        """Columns the source must have."""
        cols = [self.entity, self.timestamp, *self.features]
        if self.created_timestamp:
            cols.append(self.created_timestamp)
        cols += [a.column for a in self.aggregations if a.function != "count"]
        return list(dict.fromkeys(cols))

    @property
    def max_window(self) -> timedelta:
        return max((a.window for a in self.aggregations), default=timedelta(0))

    # --- checks ---------------------------------------------------------------------
    def validate(self) -> None:
        problems: list[str] = []
        for label, value in (
            ("name", self.name),
            ("entity", self.entity),
            ("timestamp", self.timestamp),
            ("created_timestamp", self.created_timestamp or "ok"),
        ):
            if not _NAME.match(value):
                problems.append(f"{label} {value!r} is not a valid identifier")
        for agg in self.aggregations:
            if agg.function not in _FUNCTIONS:
                problems.append(
                    f"aggregation {agg.feature_name!r}: unknown function {agg.function!r} "
                    f"(one of {', '.join(_FUNCTIONS)})"
                )
            if agg.window <= timedelta(0):
                problems.append(f"aggregation on {agg.column!r}: window must be positive")
        names = self.feature_names if not problems else []
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate feature names: {', '.join(dupes)}")
        if not names and not problems:
            problems.append("a feature view needs at least one feature or aggregation")
        if self.ttl <= timedelta(0):
            problems.append("ttl must be positive")
        if problems:
            raise FeatureViewError(f"feature view {self.name!r}: " + "; ".join(problems))
