"""Feast side of the online-read benchmark: ``get_online_features`` latency from Redis.

Materializes the given Parquet (one row per entity is enough) into Redis DB
``--redis-db`` with ``FeatureStore.materialize``, checks a sample of the values read
back against the Parquet, then times ``get_online_features(...).to_dict()`` for batches
of entities × all the given features: ``--warmup`` untimed calls, then the timed ones.
The batches are the ones in ``--batches`` (a JSON list of lists of entity keys, so that
every engine reads the very same ones; the first ``--warmup`` are the warm-up), else
``--warmup + --iterations`` random batches of ``--batch`` keys. Prints p50/p95/p99/mean
in ms as JSON on the last line.
Run with the Feast venv's python (``benchmarks/feast_env.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast_repo import (
    add_store_args,
    db_keys,
    emit,
    log,
    refs,
    store_from_args,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_store_args(p)
    p.add_argument("--batches", type=Path, help="JSON list of lists of entity keys")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    store, features = store_from_args(a)
    frame = pd.read_parquet(a.source)
    ts = pd.to_datetime(frame[a.timestamp], utc=True)
    started = time.perf_counter()
    store.materialize(
        start_date=(ts.min() - timedelta(seconds=1)).to_pydatetime(),
        end_date=(ts.max() + timedelta(seconds=1)).to_pydatetime(),
    )
    materialize_s = time.perf_counter() - started
    log(
        f"materialized {len(frame):,} rows in {materialize_s:.2f} s "
        f"({db_keys(a.redis_db):,} keys in Redis db {a.redis_db})"
    )

    latest = frame.sort_values(a.timestamp).drop_duplicates(a.entity, keep="last")
    latest = latest.set_index(a.entity)
    keys = latest.index.astype(str).tolist()
    rng = random.Random(a.seed)
    feature_refs = refs(features)

    # Sanity check: what Feast returns is what the Parquet holds.
    sample = rng.sample(keys, min(a.batch, len(keys)))
    got = store.get_online_features(
        features=feature_refs, entity_rows=[{a.entity: k} for k in sample]
    ).to_dict()
    expected = latest.loc[sample, features].to_numpy(dtype=np.float64)
    actual = np.array(
        [
            [got[f][i] if got[f][i] is not None else math.nan for f in features]
            for i in range(len(sample))
        ],
        dtype=np.float64,
    )
    mismatches = int((~np.isclose(actual, expected, equal_nan=True)).sum())
    log(f"checked {actual.size:,} values: {mismatches} mismatches")

    if a.batches:
        key_batches = json.loads(a.batches.read_text())
    else:
        key_batches = [
            rng.sample(keys, min(a.batch, len(keys))) for _ in range(a.warmup + a.iterations)
        ]
    # The entity rows are built outside the clock.
    batches = [[{a.entity: k} for k in b] for b in key_batches]
    timings = []
    for i, rows in enumerate(batches):
        t0 = time.perf_counter()
        store.get_online_features(features=feature_refs, entity_rows=rows).to_dict()
        elapsed = time.perf_counter() - t0
        if i >= a.warmup:
            timings.append(elapsed * 1000)
    ms = np.array(timings)
    result = {
        "engine": "feast get_online_features",
        "entities": len(keys),
        "features": len(features),
        "batch": len(batches[0]),
        "iterations": len(timings),
        "warmup": a.warmup,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "materialize_s": materialize_s,
        "checked_values": int(actual.size),
        "mismatches": mismatches,
    }
    log(f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    emit(result)


if __name__ == "__main__":
    main()
