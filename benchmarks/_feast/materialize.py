"""Feast side of the materialize benchmark: ``FeatureStore.materialize`` into Redis.

The source is a Parquet of already-computed feature rows (one per event): Feast's
materialization only copies the latest row per entity in ``[start, end)`` from the
offline store to the online store, so it is spared computing the features. Times
``store.materialize(start, end)`` (the Redis DB is flushed and the repo applied before
the clock starts) and prints seconds and rows/s as JSON on the last line.
Run with the Feast venv's python (``benchmarks/feast_env.py``).
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast_repo import build_store, db_keys, emit, feature_columns, log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", type=Path, required=True, help="Parquet of feature rows")
    p.add_argument("--entity", default="card_id")
    p.add_argument("--timestamp", default="event_timestamp")
    p.add_argument("--features", default="", help="comma-separated (default: all columns)")
    p.add_argument("--ttl-s", type=int, default=7 * 86_400)
    p.add_argument("--redis-db", type=int, default=3)
    p.add_argument("--work", type=Path, required=True)
    a = p.parse_args()

    features = (
        a.features.split(",") if a.features else feature_columns(a.source, a.entity, a.timestamp)
    )
    meta = pq.read_metadata(a.source)
    stamps = pq.read_table(a.source, columns=[a.timestamp])[a.timestamp]
    first, last = pc.min(stamps).as_py(), pc.max(stamps).as_py()
    # [start, end): end one second past the last event so that it is included.
    start, end = first, last + timedelta(seconds=1)
    store, _ = build_store(
        work=a.work,
        source=a.source,
        entity=a.entity,
        timestamp=a.timestamp,
        features=features,
        ttl_s=a.ttl_s,
        redis_db=a.redis_db,
    )
    log(f"materializing {meta.num_rows:,} feature rows from {start} to {end}")
    started = time.perf_counter()
    store.materialize(start_date=start, end_date=end)
    seconds = time.perf_counter() - started
    keys = db_keys(a.redis_db)
    log(f"done in {seconds:.2f} s: {keys:,} entity keys in Redis db {a.redis_db}")
    emit(
        {
            "engine": "feast materialize",
            "rows": meta.num_rows,
            "features": len(features),
            "entities_online": keys,
            "seconds": seconds,
            "rows_per_s": meta.num_rows / seconds,
            "start": start.isoformat(),
            "end": end.isoformat(),
        }
    )


if __name__ == "__main__":
    main()
