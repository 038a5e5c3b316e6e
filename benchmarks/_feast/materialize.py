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

import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast_repo import (
    add_store_args,
    db_keys,
    emit,
    log,
    store_from_args,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_store_args(p)
    a = p.parse_args()

    meta = pq.read_metadata(a.source)
    stamps = pq.read_table(a.source, columns=[a.timestamp])[a.timestamp]
    first, last = pc.min(stamps).as_py(), pc.max(stamps).as_py()
    # [start, end): end one second past the last event so that it is included.
    start, end = first, last + timedelta(seconds=1)
    store, features = store_from_args(a)
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
