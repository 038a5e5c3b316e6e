"""Materialization throughput: ours vs Feast, on the same events, same machine, same run.

Ours: ``mlops.features.materialize.materialize_view`` on the demo's ``card_transactions``
view (3 plain features + 7 rolling-window aggregates) over synthetic card transactions
(``mlops.data.generate.generate_transactions``): it reads the raw events, computes every
feature row, writes the day partitions of the Parquet offline store and each entity's
latest row into Redis (DB 2, key prefix ``bench``).

Feast: ``FeatureStore.materialize(start, end)`` into Redis (DB 3) with the ``file``
offline store, given the feature rows we computed as its source. That is the setting
most favourable to Feast: it computes nothing, it only picks each entity's latest row
and writes it online, and it writes no offline partitions.

Goal: our throughput (events/s) at least 5x Feast's.

Examples::

    .venv/bin/python benchmarks/bench_materialize.py            # ~1M events
    .venv/bin/python benchmarks/bench_materialize.py --quick    # ~45k events, smoke run
    .venv/bin/python benchmarks/bench_materialize.py --entities 44000 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast_env import format_table, run_feast, verdict, work_dir

from mlops.data.generate import generate_transactions, write_events
from mlops.features.definition import Source
from mlops.features.materialize import MaterializeResult, materialize_view
from mlops.features.offline import OfflineStore
from mlops.features.online.redis import RedisOnlineStore
from mlops.specs import card_transactions_view

GOAL_RATIO = 5.0
OURS_REDIS = "redis://127.0.0.1:6379/2"
FEAST_REDIS_DB = 3


def run_ours(events_path: Path, work: Path) -> tuple[float, MaterializeResult]:
    """Seconds and result of one fresh materialization (offline store and keys emptied)."""
    view = card_transactions_view(Source.from_path(events_path))
    offline_root = work / "offline"
    shutil.rmtree(offline_root, ignore_errors=True)
    offline = OfflineStore(offline_root)
    online = RedisOnlineStore(OURS_REDIS, key_prefix="bench")
    try:
        online.teardown(view.name)
        started = time.perf_counter()
        result = materialize_view(view, offline=offline, online=online)
        seconds = time.perf_counter() - started
    finally:
        online.close()
    return seconds, result


def export_feature_rows(work: Path, events_path: Path) -> Path:
    """Our offline store's feature rows as one Parquet file: Feast's source."""
    view = card_transactions_view(Source.from_path(events_path))
    files = OfflineStore(work / "offline").files(view)
    table = pa.concat_tables(pq.read_table(f) for f in files)
    out = work / "feature_rows.parquet"
    pq.write_table(table, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--entities", type=int, default=22_000, help="cards; 22,000 over 60 days is ~1M events"
    )
    parser.add_argument("--days", type=int, default=60, help="days of events (default 60)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine, best counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 cards, 1 run")
    parser.add_argument(
        "--feast-timeout", type=float, default=1200, help="seconds before Feast is stopped"
    )
    args = parser.parse_args()
    if args.quick:
        args.entities, args.repeat = 1_000, 1

    work = work_dir("materialize")
    print(f"generating events: {args.entities:,} cards over {args.days} days ...", flush=True)
    events = generate_transactions(n_entities=args.entities, days=args.days)
    events_path = write_events(events, work / "events.parquet")
    n_events = len(events)
    del events
    print(f"{n_events:,} events -> {events_path}")

    ours_best, ours = float("inf"), None
    for i in range(args.repeat):
        seconds, ours = run_ours(events_path, work)
        print(
            f"ours run {i + 1}: {seconds:.2f} s, {ours.rows:,} rows, {ours.partitions} "
            f"partitions, {ours.entities_online:,} entities online",
            flush=True,
        )
        ours_best = min(ours_best, seconds)
    assert ours is not None
    feature_rows = export_feature_rows(work, events_path)

    feast_best, feast = float("inf"), {}
    for i in range(args.repeat):
        feast = run_feast(
            "materialize.py",
            [
                "--source",
                str(feature_rows),
                "--work",
                str(work / "feast-repo"),
                "--ttl-s",
                str(7 * 86_400),
                "--redis-db",
                str(FEAST_REDIS_DB),
            ],
            timeout_s=args.feast_timeout,
        )
        print(f"feast run {i + 1}: {feast['seconds']:.2f} s", flush=True)
        feast_best = min(feast_best, feast["seconds"])

    ours_rate = n_events / ours_best
    feast_rate = n_events / feast_best
    ratio = ours_rate / feast_rate
    print()
    print(
        f"materialize: {n_events:,} events, {args.entities:,} cards, {args.days} days, "
        f"best of {args.repeat} (feast {feast.get('feast_version', '?')}, "
        f"peak RSS {feast.get('peak_rss_mb', 0):,.0f} MB)"
    )
    print(
        format_table(
            ["engine", "seconds", "events/s", "entities online", "does"],
            [
                [
                    "ours materialize_view",
                    f"{ours_best:.2f}",
                    f"{ours_rate:,.0f}",
                    f"{ours.entities_online:,}",
                    f"compute 10 features, write {ours.partitions} Parquet partitions + Redis",
                ],
                [
                    "feast materialize",
                    f"{feast_best:.2f}",
                    f"{feast_rate:,.0f}",
                    f"{feast['entities_online']:,}",
                    "pick latest precomputed row per entity, write Redis",
                ],
            ],
        )
    )
    print(
        "note: Feast was given our already-computed feature rows as its source (the "
        "setting most favourable to it): it computes nothing and writes no offline store."
    )
    if ours.entities_online != feast["entities_online"]:
        print(
            f"warning: entities online differ: ours {ours.entities_online:,}, "
            f"feast {feast['entities_online']:,}"
        )
    print(
        f"goal: ours >= {GOAL_RATIO:.0f}x Feast's events/s: ours is {ratio:.2f}x -> "
        f"{verdict(ratio >= GOAL_RATIO)}"
    )


if __name__ == "__main__":
    main()
