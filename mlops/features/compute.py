"""Computing a feature view's rows: plain columns and per-entity rolling windows.

One feature row per source event. An aggregate over window ``w`` at a row with time
``t`` covers the entity's events with ``t - w <= timestamp <= t`` (the row itself and
any event at the same instant included), so every value is known at time ``t``.
Sums and means are computed in fixed point (values rounded to 1e-9), so they are exact
and the same whatever rows a query saw: materializing in chunks of any size, or again,
writes the same values.
The windows are DuckDB ``RANGE`` window functions over the events frame.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from mlops.features.definition import FeatureView
from mlops.features.source import to_utc

#: Sums and means add values as fixed-point decimals (9 places; |value| < 1e29).
EXACT_SUM_TYPE = "DECIMAL(38, 9)"

_SQL_FUNCTION = {"count": "count", "sum": "sum", "mean": "avg", "min": "min", "max": "max"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def feature_sql(view: FeatureView) -> str:
    """The SELECT that computes ``view`` over a relation named ``events``."""
    key, ts = _quote(view.entity), _quote(view.timestamp)
    windows: dict[int, str] = {}
    selects = [f"CAST({key} AS VARCHAR) AS {key}", ts]
    if view.created_timestamp:
        selects.append(_quote(view.created_timestamp))
    selects += [f"CAST({_quote(c)} AS DOUBLE) AS {_quote(c)}" for c in view.features]
    for agg in view.aggregations:
        seconds = int(agg.window.total_seconds())
        win = windows.setdefault(seconds, f"w{seconds}")
        arg = "*" if agg.function == "count" else _quote(agg.column)
        if agg.function in ("sum", "mean"):
            # Exact (fixed-point) sums: a value does not depend on which other rows the
            # query saw or in what order it added them, so every chunking of a
            # materialization writes the same bytes.
            arg = f"CAST({arg} AS {EXACT_SUM_TYPE})"
        expr = f"{_SQL_FUNCTION[agg.function]}({arg}) OVER {win}"
        selects.append(f"CAST({expr} AS DOUBLE) AS {_quote(agg.feature_name)}")
    window_defs = ", ".join(
        f"{name} AS (PARTITION BY {key} ORDER BY {ts} "
        f"RANGE BETWEEN INTERVAL {seconds} SECOND PRECEDING AND CURRENT ROW)"
        for seconds, name in windows.items()
    )
    sql = "SELECT " + ", ".join(selects) + " FROM events"
    if window_defs:
        sql += " WINDOW " + window_defs
    return sql


def compute_features(
    view: FeatureView,
    events: pd.DataFrame,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Feature rows of ``view`` for events with ``start <= timestamp < end``.

    ``events`` must hold the look-back too (``start - view.max_window`` onwards), as
    :func:`mlops.features.source.view_events` returns it. The result has the entity key
    (as text), the timestamp (UTC) and one float column per feature, sorted by time.
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("events", events)
        sql = f"SELECT * FROM ({feature_sql(view)}) AS f"
        conditions, params = [], []
        if start is not None:
            conditions.append(f"{_quote(view.timestamp)} >= ?")
            params.append(to_utc(start).to_pydatetime())
        if end is not None:
            conditions.append(f"{_quote(view.timestamp)} < ?")
            params.append(to_utc(end).to_pydatetime())
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY {_quote(view.timestamp)}, {_quote(view.entity)}"
        frame = con.execute(sql, params).df()
    finally:
        con.close()
    frame[view.timestamp] = pd.to_datetime(frame[view.timestamp], utc=True).astype(
        "datetime64[us, UTC]"
    )
    return frame
