"""Feast side of the point-in-time benchmark: ``get_historical_features`` (file store).

Label rows (entity key + timestamp, other columns kept) are joined point-in-time with
a Parquet of feature rows through the ``file`` offline store: each label gets its
entity's newest feature row with ``label_ts - ttl <= feature_ts <= label_ts``. Times
``get_historical_features(entity_df, features).to_df()`` (reading the label Parquet and
applying the repo are outside the clock), writes the result to ``--out`` so the caller
can check it agrees with ours, and prints seconds as JSON on the last line.
Run with the Feast venv's python (``benchmarks/feast_env.py``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from feast_repo import (
    add_store_args,
    emit,
    log,
    refs,
    store_from_args,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_store_args(p, ttl_required=True)
    p.add_argument("--labels", type=Path, required=True, help="Parquet of label rows")
    p.add_argument("--out", type=Path, required=True, help="where to write the joined rows")
    p.add_argument("--label-timestamp", default="event_timestamp", help="label rows' timestamp")
    a = p.parse_args()

    # The online store is not used here: nothing is flushed or written to Redis.
    store, features = store_from_args(a, flush=False)
    labels = pd.read_parquet(a.labels)
    labels[a.entity] = labels[a.entity].astype(str)
    if a.label_timestamp != "event_timestamp":
        # Feast finds the entity_df's timestamp column by name or as its only datetime.
        labels = labels.rename(columns={a.label_timestamp: "event_timestamp"})
    log(
        f"point-in-time join: {len(labels):,} label rows, {len(features)} features, ttl {a.ttl_s} s"
    )
    started = time.perf_counter()
    joined = store.get_historical_features(entity_df=labels, features=refs(features)).to_df()
    seconds = time.perf_counter() - started
    log(f"done in {seconds:.2f} s: {len(joined):,} rows")
    if a.label_timestamp != "event_timestamp":
        joined = joined.rename(columns={"event_timestamp": a.label_timestamp})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    joined.to_parquet(a.out, index=False)
    emit(
        {
            "engine": "feast get_historical_features (file offline store)",
            "labels": len(labels),
            "rows_out": len(joined),
            "features": len(features),
            "seconds": seconds,
            "out": str(a.out),
        }
    )


if __name__ == "__main__":
    main()
