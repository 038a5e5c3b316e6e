"""Online read latency from Redis: ours vs raw MGET vs Feast, same entities and values.

One row per entity (``--entities`` entities × ``--features`` float features) is seeded
into three places on the local Redis: our online store (``RedisOnlineStore``, DB 2,
a key prefix of its own), plain string keys holding the same floats for a raw ``MGET``
baseline (the floor: one round trip, no decoding), and Feast's Redis online store (DB 3,
through ``FeatureStore.materialize`` from a Parquet file of the same rows). Every engine
reads the very same batches of ``--batch`` entities × all features: the first
``--warmup`` are not timed. Ours and MGET are timed interleaved in one loop, so both see
the same moments of the machine (``benchmarks/online_read_ours.py``); Feast runs after
them in its own venv and process. Everything seeded is deleted at the end.

Goals: our ``read`` p99 at most 3x raw MGET's p99, and Feast's ``get_online_features``
p99 at least 10x ours.

Examples::

    .venv/bin/python benchmarks/bench_online_read.py            # 10k entities, 2,000 reads
    .venv/bin/python benchmarks/bench_online_read.py --quick    # smoke run
    .venv/bin/python benchmarks/bench_online_read.py --entities 100000 --iterations 5000
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from feast_env import format_table, run_feast, verdict, work_dir
from online_read_ours import (
    ENTITY,
    TIMESTAMP,
    cleanup,
    feature_names,
    make_batches,
    measure_interleaved,
    mget_case,
    ours_case,
    seed,
    summarize,
)

from mlops.features.online.redis import RedisOnlineStore, connect

GOAL_VS_MGET = 3.0
GOAL_VS_FEAST = 10.0
OURS_REDIS = "redis://127.0.0.1:6379/2"
FEAST_REDIS_DB = 3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=10_000, help="entities seeded")
    parser.add_argument("--features", type=int, default=20, help="features per entity")
    parser.add_argument("--batch", type=int, default=100, help="entities per read")
    parser.add_argument("--iterations", type=int, default=2_000, help="timed reads per engine")
    parser.add_argument("--warmup", type=int, default=200, help="untimed reads first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2k entities, 200 reads")
    parser.add_argument(
        "--feast-timeout", type=float, default=1200, help="seconds before Feast is stopped"
    )
    args = parser.parse_args()
    if args.quick:
        args.entities, args.iterations, args.warmup = 2_000, 200, 20

    work = work_dir("online_read")
    prefix = f"bench-online-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    try:
        frame = seed(
            n_entities=args.entities,
            n_features=args.features,
            seed=args.seed,
            url=OURS_REDIS,
            prefix=prefix,
        )
        features = feature_names(frame)
        source = work / "rows.parquet"
        frame.to_parquet(source, index=False)  # the same rows, for Feast to materialize
        print(
            f"seeded {args.entities:,} entities x {args.features} features in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        batches = make_batches(
            frame[ENTITY].tolist(),
            batch=args.batch,
            iterations=args.warmup + args.iterations,
            seed=args.seed + 1,
        )
        batches_path = work / "batches.json"
        batches_path.write_text(json.dumps(batches))
        store = RedisOnlineStore(OURS_REDIS, key_prefix=prefix)
        client = connect(OURS_REDIS)
        try:
            samples = measure_interleaved(
                {
                    "ours": ours_case(store),
                    "ours_matrix": ours_case(store, features=features),
                    "mget": mget_case(client, prefix=prefix),
                },
                batches,
                warmup=args.warmup,
            )
        finally:
            store.close()
            client.close()
    finally:
        cleanup(url=OURS_REDIS, prefix=prefix)
    ours, matrix, mget = (summarize(samples[k]) for k in ("ours", "ours_matrix", "mget"))
    print(f"ours:  p50 {ours['p50_ms']:.3f} ms, p99 {ours['p99_ms']:.3f} ms", flush=True)
    print(f"mget:  p50 {mget['p50_ms']:.3f} ms, p99 {mget['p99_ms']:.3f} ms", flush=True)

    feast: dict[str, Any] = run_feast(
        "online_read.py",
        [
            "--source",
            str(source),
            "--entity",
            ENTITY,
            "--timestamp",
            TIMESTAMP,
            "--batches",
            str(batches_path),
            "--warmup",
            str(args.warmup),
            "--redis-db",
            str(FEAST_REDIS_DB),
            "--work",
            str(work / "feast-repo"),
        ],
        timeout_s=args.feast_timeout,
    )
    feast_ms = {k: feast[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}
    print(f"feast: p50 {feast['p50_ms']:.3f} ms, p99 {feast['p99_ms']:.3f} ms", flush=True)

    def row(name: str, r: dict[str, float], note: str) -> list[str]:
        return [
            name,
            f"{r['p50_ms']:.3f}",
            f"{r['p95_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['mean_ms']:.3f}",
            f"{r['p99_ms'] / ours['p99_ms']:.2f}x",
            note,
        ]

    print()
    print(
        f"online read: {args.batch} entities x {args.features} features per read, "
        f"{args.entities:,} entities seeded, the same {args.iterations:,} timed reads after "
        f"{args.warmup} warm-up for every engine (feast {feast['feast_version']})"
    )
    print(
        format_table(
            ["engine", "p50 ms", "p95 ms", "p99 ms", "mean ms", "p99 / ours", "returns"],
            [
                row("ours RedisOnlineStore.read", ours, "a row (dict) per entity"),
                row("ours read_matrix", matrix, "a float array (for information)"),
                row("raw MGET", mget, "raw bytes, not decoded"),
                row("feast get_online_features", feast_ms, ".to_dict(): lists per feature"),
            ],
        )
    )
    if feast["mismatches"]:
        print(f"warning: Feast returned {feast['mismatches']} values that differ from the rows")
    else:
        print(f"feast's values checked on {feast['checked_values']:,} values: all equal")
    vs_mget = ours["p99_ms"] / mget["p99_ms"]
    vs_feast = feast["p99_ms"] / ours["p99_ms"]
    print(
        f"goal: ours p99 <= {GOAL_VS_MGET:.0f}x raw MGET p99: {vs_mget:.2f}x -> "
        f"{verdict(vs_mget <= GOAL_VS_MGET)}"
    )
    print(
        f"goal: ours >= {GOAL_VS_FEAST:.0f}x faster than Feast at p99: {vs_feast:.1f}x -> "
        f"{verdict(vs_feast >= GOAL_VS_FEAST)}"
    )


if __name__ == "__main__":
    main()
