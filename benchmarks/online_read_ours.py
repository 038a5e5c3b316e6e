"""Online read latency: our Redis store against a raw ``MGET``, and the SQLite store.

Seeds one view of 10,000 entities x 20 float features into Redis under a dedicated key
prefix, plus one plain string key per entity holding the same 20 floats packed (160
bytes, the size of what our store keeps per row), then times, interleaved in one loop so
that every case sees the same moments of the machine, random batches of 100 entities read

- through ``RedisOnlineStore.read`` (a mapping of ``OnlineRow``) and ``read_matrix``
  (a float array, what serving needs),
- as one raw ``MGET`` of 100 string keys, with the same redis-py client settings
  (:func:`mlops.features.online.redis.connect`): the floor, one round trip, no decoding,
- through the SQLite store's ``read`` and ``read_matrix`` (for information),

and prints p50 / p95 / p99 of each and its ratio to ``MGET``. Everything written is
deleted at the end (and expires within the hour regardless).
Goal: ``RedisOnlineStore.read`` p99 at most 3x the ``MGET`` p99.

    .venv/bin/python benchmarks/online_read_ours.py                  # 2,000 batches
    .venv/bin/python benchmarks/online_read_ours.py --iterations 500 --no-sqlite

``benchmarks/bench_online_read.py`` imports :func:`seed`, :func:`measure_ours` and
:func:`measure_mget` (frame in, percentiles out); the loop's pieces are importable too:
:func:`ours_case`, :func:`mget_case`, :func:`make_batches`, :func:`measure_interleaved`,
:func:`summarize`, :func:`print_table`, :func:`cleanup`.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.utils import HIREDIS_AVAILABLE

from mlops.features.online.base import OnlineStore
from mlops.features.online.redis import RedisOnlineStore, connect
from mlops.features.online.sqlite import SqliteOnlineStore

DEFAULT_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT_PREFIX = "bench-online"
VIEW = "bench_online"
ENTITY = "entity_id"
TIMESTAMP = "event_timestamp"
VERSION = "bench-v1"
TTL = timedelta(hours=1)
GOAL_RATIO = 3.0
BASELINE = "redis MGET (raw)"

# One timed case: reads these entity keys.
Case = Callable[[Sequence[str]], object]


def make_rows(*, n_entities: int = 10_000, n_features: int = 20, seed: int = 0) -> pd.DataFrame:
    """``entity_id``, ``event_timestamp`` (within the last hour) and ``f00``… floats."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            ENTITY: [f"e{i:07d}" for i in range(n_entities)],
            TIMESTAMP: pd.Timestamp.now(tz="UTC").floor("s")
            - pd.to_timedelta(rng.integers(0, 3600, n_entities), unit="s"),
        }
    )
    for j in range(n_features):
        frame[f"f{j:02d}"] = rng.normal(loc=50.0, scale=30.0, size=n_entities)
    return frame


def feature_names(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (ENTITY, TIMESTAMP)]


def raw_prefix(prefix: str) -> str:
    return f"{prefix}-raw:"


def seed_store(store: OnlineStore, frame: pd.DataFrame, *, view: str = VIEW) -> int:
    """Write ``frame`` as one view through ``store``; returns the rows written."""
    store.update(view)
    return store.write_batch(
        view=view,
        version=VERSION,
        frame=frame,
        entity=ENTITY,
        timestamp=TIMESTAMP,
        features=feature_names(frame),
        ttl=TTL,
    )


def seed_raw(client: redis.Redis, frame: pd.DataFrame, *, prefix: str) -> None:
    """One string key per entity: its features as packed float64, expiring like the rows."""
    values = frame[feature_names(frame)].to_numpy(dtype="<f8")
    keys = frame[ENTITY].tolist()
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key, row in zip(keys[start : start + 1000], values[start : start + 1000], strict=True):
            pipe.set(raw_prefix(prefix) + key, row.tobytes(), ex=TTL)
        pipe.execute()


def seed(
    *,
    n_entities: int = 10_000,
    n_features: int = 20,
    seed: int = 0,
    url: str = DEFAULT_URL,
    prefix: str = DEFAULT_PREFIX,
    sqlite_path: Path | None = None,
) -> pd.DataFrame:
    """Seed our Redis store, the raw ``MGET`` keys (and an SQLite store); returns the rows."""
    frame = make_rows(n_entities=n_entities, n_features=n_features, seed=seed)
    store = RedisOnlineStore(url, key_prefix=prefix)
    client = connect(url)
    try:
        store.teardown(VIEW)
        seed_store(store, frame)
        seed_raw(client, frame, prefix=prefix)
    finally:
        store.close()
        client.close()
    if sqlite_path is not None:
        sqlite = SqliteOnlineStore(sqlite_path)
        try:
            sqlite.teardown(VIEW)
            seed_store(sqlite, frame)
        finally:
            sqlite.close()
    return frame


def cleanup(*, url: str = DEFAULT_URL, prefix: str = DEFAULT_PREFIX) -> None:
    """Delete what :func:`seed` wrote to Redis (the view, its meta hash, the raw keys)."""
    store = RedisOnlineStore(url, key_prefix=prefix)
    client = connect(url)
    try:
        store.teardown(VIEW)
        batch: list[bytes] = []
        for key in client.scan_iter(match=raw_prefix(prefix) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        store.close()
        client.close()


def make_batches(
    keys: Sequence[str], *, batch: int = 100, iterations: int = 2000, seed: int = 0
) -> list[list[str]]:
    """``iterations`` random batches of ``batch`` distinct keys."""
    rng = random.Random(seed)
    return [rng.sample(list(keys), batch) for _ in range(iterations)]


def ours_case(
    store: OnlineStore, *, view: str = VIEW, features: Sequence[str] | None = None
) -> Case:
    """``store.read`` of a batch, or ``store.read_matrix`` when ``features`` are given."""
    if features is None:
        return lambda keys: store.read(view=view, keys=keys)
    names = list(features)
    return lambda keys: store.read_matrix(view=view, keys=keys, features=names)


def mget_case(client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> Case:
    """One raw ``MGET`` of the batch's string keys."""
    head = raw_prefix(prefix)
    return lambda keys: client.mget([head + key for key in keys])


def measure_interleaved(
    cases: Mapping[str, Case], batches: Sequence[Sequence[str]], *, warmup: int = 100
) -> dict[str, np.ndarray]:
    """Latencies in ms per case. Every batch is read by each case in turn, starting with a
    different case each time (so that none is always the one after another's work); the
    first ``warmup`` batches are not recorded."""
    named = list(cases.items())
    samples: dict[str, list[int]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    for n, batch in enumerate(batches):
        first = n % len(named)
        for name, case in named[first:] + named[:first]:
            start = clock()
            case(batch)
            elapsed = clock() - start
            if n >= warmup:
                samples[name].append(elapsed)
    return {name: np.asarray(got, dtype=np.float64) / 1e6 for name, got in samples.items()}


def summarize(samples_ms: np.ndarray) -> dict[str, float]:
    """``p50_ms``, ``p95_ms``, ``p99_ms`` and ``mean_ms`` of latencies in ms."""
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(samples_ms.mean()),
    }


def _measure_alone(
    make_case: Callable[[], tuple[Case, Callable[[], None]]],
    frame: pd.DataFrame,
    *,
    batch: int,
    iterations: int,
    warmup: int,
    seed: int,
) -> dict[str, float]:
    case, close = make_case()
    try:
        batches = make_batches(
            frame[ENTITY].tolist(), batch=batch, iterations=warmup + iterations, seed=seed
        )
        return summarize(measure_interleaved({"case": case}, batches, warmup=warmup)["case"])
    finally:
        close()


def measure_ours(
    frame: pd.DataFrame,
    *,
    batch: int = 100,
    iterations: int = 2000,
    warmup: int = 100,
    seed: int = 0,
    url: str = DEFAULT_URL,
    prefix: str = DEFAULT_PREFIX,
    matrix: bool = False,
) -> dict[str, float]:
    """Percentiles of ``RedisOnlineStore.read`` (or ``read_matrix``) of the seeded rows."""

    def make() -> tuple[Case, Callable[[], None]]:
        store = RedisOnlineStore(url, key_prefix=prefix)
        features = feature_names(frame) if matrix else None
        return ours_case(store, features=features), store.close

    return _measure_alone(make, frame, batch=batch, iterations=iterations, warmup=warmup, seed=seed)


def measure_mget(
    frame: pd.DataFrame,
    *,
    batch: int = 100,
    iterations: int = 2000,
    warmup: int = 100,
    seed: int = 0,
    url: str = DEFAULT_URL,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, float]:
    """Percentiles of one raw ``MGET`` per batch of the seeded string keys."""

    def make() -> tuple[Case, Callable[[], None]]:
        client = connect(url)
        return mget_case(client, prefix=prefix), client.close

    return _measure_alone(make, frame, batch=batch, iterations=iterations, warmup=warmup, seed=seed)


def print_table(results: Mapping[str, np.ndarray], *, baseline: str = BASELINE) -> None:
    """One line per case: percentiles and the p50 / p99 ratios to ``baseline``."""
    base = summarize(results[baseline])
    print(f"{'case':<30} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50 x':>7} {'p99 x':>7}")
    for name, samples in results.items():
        got = summarize(samples)
        print(
            f"{name:<30} {got['p50_ms']:8.3f} {got['p95_ms']:8.3f} {got['p99_ms']:8.3f} "
            f"{got['p50_ms'] / base['p50_ms']:7.2f} {got['p99_ms'] / base['p99_ms']:7.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=2000, help="timed batches per case")
    parser.add_argument("--warmup", type=int, default=100, help="untimed batches first")
    parser.add_argument("--batch", type=int, default=100, help="entities per read")
    parser.add_argument("--entities", type=int, default=10_000, help="entities seeded")
    parser.add_argument("--features", type=int, default=20, help="features per entity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite store")
    args = parser.parse_args(argv)

    prefix = f"{DEFAULT_PREFIX}-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        sqlite_path = None if args.no_sqlite else Path(tmp) / "online.db"
        started = time.perf_counter()
        store = RedisOnlineStore(args.redis_url, key_prefix=prefix)
        client = connect(args.redis_url)
        sqlite = SqliteOnlineStore(sqlite_path) if sqlite_path else None
        try:
            frame = seed(
                n_entities=args.entities,
                n_features=args.features,
                seed=args.seed,
                url=args.redis_url,
                prefix=prefix,
                sqlite_path=sqlite_path,
            )
            features = feature_names(frame)
            print(
                f"seeded {args.entities:,} entities x {args.features} features in "
                f"{time.perf_counter() - started:.1f} s; {args.iterations:,} batches of "
                f"{args.batch} (after {args.warmup} warm-up) read by each case in turn; "
                f"redis-py {redis.__version__}, "
                f"{'hiredis' if HIREDIS_AVAILABLE else 'pure-Python'} reply parser"
            )
            cases: dict[str, Case] = {
                BASELINE: mget_case(client, prefix=prefix),
                "redis read (rows)": ours_case(store),
                "redis read_matrix (array)": ours_case(store, features=features),
            }
            if sqlite is not None:
                cases["sqlite read (rows)"] = ours_case(sqlite)
                cases["sqlite read_matrix (array)"] = ours_case(sqlite, features=features)
            batches = make_batches(
                frame[ENTITY].tolist(),
                batch=args.batch,
                iterations=args.warmup + args.iterations,
                seed=args.seed,
            )
            results = measure_interleaved(cases, batches, warmup=args.warmup)
            print_table(results)
            ratio = (
                summarize(results["redis read (rows)"])["p99_ms"]
                / summarize(results[BASELINE])["p99_ms"]
            )
            verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
            print(f"goal: redis read p99 <= {GOAL_RATIO:g}x MGET p99: {ratio:.2f}x, {verdict}")
        finally:
            store.close()
            client.close()
            if sqlite is not None:
                sqlite.close()
            cleanup(url=args.redis_url, prefix=prefix)


if __name__ == "__main__":
    main()
