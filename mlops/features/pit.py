"""Point-in-time joins: training rows that only see features known at label time.

For a label of entity ``e`` at time ``t``, a view contributes its newest feature row of
``e`` with ``t - ttl <= feature_timestamp <= t``; no such row leaves that view's
features missing (NaN). A feature row from after ``t`` is never used.
"""

from __future__ import annotations

import pandas as pd

from mlops.errors import SchemaError
from mlops.features.definition import FeatureView


def feature_timestamp_column(view: FeatureView) -> str:
    return f"{view.name}__feature_timestamp"


def point_in_time_join(
    labels: pd.DataFrame,
    *,
    entity: str,
    timestamp: str,
    views: list[tuple[FeatureView, pd.DataFrame]],
) -> pd.DataFrame:
    """``labels`` with each view's features as of each label's time.

    ``views`` pairs each view with its offline rows. The result keeps the labels' order
    and adds, per view, its features and ``<view>__feature_timestamp``.
    """
    for col in (entity, timestamp):
        if col not in labels.columns:
            raise SchemaError(f"label rows have no column {col!r}")
    seen: dict[str, str] = {}
    for view, _ in views:
        for name in view.feature_names:
            if name in seen or name in labels.columns:
                other = seen.get(name, "the label rows")
                raise SchemaError(
                    f"feature {name!r} of view {view.name!r} clashes with {other}: "
                    "rename one (Aggregation(name=...))"
                )
            seen[name] = f"view {view.name!r}"
    order = "__label_order"
    left = labels.assign(
        **{
            order: range(len(labels)),
            entity: labels[entity].astype(str),
            timestamp: pd.to_datetime(labels[timestamp], utc=True).astype("datetime64[ns, UTC]"),
        }
    ).sort_values(timestamp, kind="stable")
    for view, rows in views:
        fts = feature_timestamp_column(view)
        right = rows[[view.entity, view.timestamp, *view.feature_names]].rename(
            columns={view.entity: entity, view.timestamp: fts}
        )
        right[entity] = right[entity].astype(str)
        right[fts] = pd.to_datetime(right[fts], utc=True).astype("datetime64[ns, UTC]")
        right = right.sort_values(fts, kind="stable")
        left = pd.merge_asof(
            left,
            right,
            left_on=timestamp,
            right_on=fts,
            by=entity,
            direction="backward",
            allow_exact_matches=True,
            tolerance=pd.Timedelta(view.ttl),
        )
    return left.sort_values(order).drop(columns=order).reset_index(drop=True)
