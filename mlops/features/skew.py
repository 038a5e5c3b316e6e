"""Train/serve skew: do the online values equal the latest offline values?

For a seeded sample of entities with rows in the view's last TTL of offline partitions,
each entity's newest offline row (the one materialization sent online) is compared with
what the online store returns: the same event time, the same view version and the same
value of every feature (NaN equals NaN; values are compared exactly, since both stores
keep float64 exactly). The report counts entities missing online, on another version,
with another event time, and mismatches per feature; :attr:`SkewReport.rate` is the
share of sampled entities with any difference (0.0 is the healthy value).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pyarrow as pa

from mlops.errors import FeatureStoreError
from mlops.features.definition import FeatureView
from mlops.features.materialize import latest_rows
from mlops.features.offline import OfflineStore
from mlops.features.online import OnlineStore
from mlops.features.source import to_utc

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 20


@dataclass
class SkewReport:
    view: str
    version: str
    sampled: int
    missing_online: int = 0
    other_version: int = 0
    other_event_time: int = 0
    value_mismatches: int = 0
    skewed: int = 0  # entities with any difference, each counted once
    by_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, object]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.skewed / self.sampled if self.sampled else 0.0

    def rows(self) -> list[dict[str, object]]:
        """The report as table rows (for a Prefect table artifact)."""
        out: list[dict[str, object]] = [
            {"check": "entities sampled", "count": self.sampled},
            {"check": "missing online", "count": self.missing_online},
            {"check": "other view version online", "count": self.other_version},
            {"check": "other event time online", "count": self.other_event_time},
            {"check": "value mismatches (any feature)", "count": self.value_mismatches},
        ]
        out += [
            {"check": f"feature {name} differs", "count": n}
            for name, n in sorted(self.by_feature.items())
            if n
        ]
        out.append({"check": "skew rate", "count": round(self.rate, 6)})
        return out


def _equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def latest_offline(view: FeatureView, offline: OfflineStore) -> pa.Table:
    """Each entity's newest offline row among the last ``ttl`` of partitions."""
    days = offline.days(view)
    if not days:
        raise FeatureStoreError(
            f"offline store has no rows of {view.ref}: materialize the view first "
            f"(`mlops materialize {view.name}`)"
        )
    since = days[-1] - timedelta(seconds=math.ceil(view.ttl.total_seconds() / 86_400) * 86_400)
    tables = [offline.read_partition(offline.partition_path(view, d)) for d in days if d >= since]
    table = pa.concat_tables(tables, promote_options="default")
    return latest_rows(view, table)


def check_skew(
    view: FeatureView,
    *,
    offline: OfflineStore,
    online: OnlineStore,
    sample: int = 200,
    seed: int = 0,
) -> SkewReport:
    """Compare ``sample`` entities' newest offline rows with the online store."""
    latest = latest_offline(view, offline)
    keys = latest[view.entity].to_pylist()
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    rng = np.random.default_rng(seed)
    n = min(sample, len(keys))
    picked = np.sort(rng.choice(order, size=n, replace=False)) if n else np.array([], int)
    rows = latest.take(pa.array(picked, pa.int64())).to_pylist()
    found = online.read(view=view.name, keys=[str(r[view.entity]) for r in rows])
    report = SkewReport(view=view.name, version=view.version, sampled=n)
    report.by_feature = dict.fromkeys(view.feature_names, 0)
    for row in rows:
        key = str(row[view.entity])
        got = found.get(key)
        problems: list[str] = []
        if got is None:
            report.missing_online += 1
            problems.append("missing online")
        else:
            if got.version != view.version:
                report.other_version += 1
                problems.append(f"online version {got.version}")
            if to_utc(got.event_timestamp) != to_utc(row[view.timestamp]):
                report.other_event_time += 1
                problems.append(f"online event time {got.event_timestamp.isoformat()}")
            differing = [
                name
                for name in view.feature_names
                if not _equal(
                    float(got.values.get(name, math.nan)),
                    math.nan if row[name] is None else float(row[name]),
                )
            ]
            if differing:
                report.value_mismatches += 1
                for name in differing:
                    report.by_feature[name] += 1
                problems.append("differs: " + ", ".join(differing))
        if problems:
            report.skewed += 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append({"entity": key, "problems": "; ".join(problems)})
    logger.info("skew check of %s: %d of %d sampled entities differ", view.ref, report.skewed, n)
    return report
