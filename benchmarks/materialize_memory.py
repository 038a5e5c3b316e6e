"""Peak memory of materializing a large source: goal 10M events under 2 GiB.

Generates (once, cached under ``benchmarks/.work/``) a card-transactions source of
``--events`` rows as one Parquet file, written slice by slice so the generator itself
stays small, then materializes the demo view over all of it into a fresh offline store
and a SQLite (default) or Redis online store, in a child process whose peak resident
memory (``ru_maxrss``) is reported beside the goal, with the time and throughput.

For comparison it also reports what the same child process holds after only reading
the source's columns into pandas (what an unchunked materialization starts from).

Example::

    python benchmarks/materialize_memory.py --events 10000000
    python benchmarks/materialize_memory.py --events 1000000 --online redis
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _child import run_child

GOAL_BYTES = 2 * 1024**3
WORK = Path(__file__).resolve().parent / ".work"
EVENTS_PER_ENTITY_PER_DAY = 0.75
DAYS = 90


def source_path(events: int) -> Path:
    return WORK / f"transactions_{events}.parquet"


def generate(events: int) -> Path:
    """A Parquet source of about ``events`` transactions over 90 days (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops.data.generate import generate_transactions

    path = source_path(events)
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    entities = max(1, round(events / (DAYS * EVENTS_PER_ENTITY_PER_DAY)))
    slice_entities = 10_000
    end = datetime(2025, 1, 1, tzinfo=UTC)
    tmp = path.with_suffix(".tmp")
    writer: pq.ParquetWriter | None = None
    made = 0
    try:
        for i, first in enumerate(range(0, entities, slice_entities)):
            n = min(slice_entities, entities - first)
            frame = generate_transactions(
                n_entities=n,
                days=DAYS,
                events_per_entity_per_day=EVENTS_PER_ENTITY_PER_DAY,
                end=end,
                seed=1000 + i,
            )
            frame["card_id"] = f"s{i}_" + frame["card_id"].astype(str)
            frame["transaction_id"] = f"s{i}_" + frame["transaction_id"].astype(str)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=250_000)
            made += len(frame)
            print(f"  generated {made:,} events", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return path


def child_materialize(source: str, online: str, chunk_days: int | None) -> dict[str, object]:
    """Run in the child process: materialize everything, report time and peak memory."""
    from mlops.features.definition import Source
    from mlops.features.materialize import materialize_view
    from mlops.features.offline import OfflineStore
    from mlops.features.online import OnlineStore
    from mlops.specs import card_transactions_view

    view = card_transactions_view(Source.from_path(source))
    with tempfile.TemporaryDirectory() as tmp:
        store: OnlineStore
        if online == "redis":
            from mlops.features.online.redis import RedisOnlineStore

            store = RedisOnlineStore("redis://127.0.0.1:6379/0", key_prefix="bench-mem")
        else:
            from mlops.features.online.sqlite import SqliteOnlineStore

            store = SqliteOnlineStore(Path(tmp) / "online.db")
        started = time.perf_counter()
        result = materialize_view(
            view, offline=OfflineStore(Path(tmp) / "offline"), online=store, chunk_days=chunk_days
        )
        seconds = time.perf_counter() - started
        if online == "redis":
            store.teardown(view.name)
        store.close()
    return {
        "rows": result.rows,
        "partitions": result.partitions,
        "chunks": result.chunks,
        "entities_online": result.entities_online,
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def child_read_all(source: str) -> dict[str, object]:
    """Run in the child process: read the view's source columns whole, report memory."""
    import pandas as pd

    from mlops.features.definition import Source
    from mlops.specs import card_transactions_view

    view = card_transactions_view(Source.from_path(source))
    frame = pd.read_parquet(source, columns=view.source_columns)
    return {
        "rows": len(frame),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="source size (10M)")
    parser.add_argument("--online", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument(
        "--chunk-days", type=int, default=0, help="days per chunk (default 0: by event count)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "materialize":
            print(json.dumps(child_materialize(rest[0], rest[1], int(rest[2]) or None)))
        else:
            print(json.dumps(child_read_all(rest[0])))
        return

    print(f"source: ~{args.events:,} events (generating once if needed)", flush=True)
    path = generate(args.events)
    read = run_child(__file__, "read", str(path))
    mat = run_child(__file__, "materialize", str(path), args.online, str(args.chunk_days))
    gib = 1024**3
    peak = int(str(mat["peak_rss_bytes"]))
    seconds = float(str(mat["seconds"]))
    rows = int(str(mat["rows"]))
    print(f"\n{'':34}{'peak RSS':>12}{'seconds':>10}{'events/s':>12}")
    print(
        f"{'read source columns into pandas':34}"
        f"{int(str(read['peak_rss_bytes'])) / gib:>10.2f} GiB{'':>10}{'':>12}"
    )
    label = f"materialize ({args.online}, {mat['chunks']} chunks)"
    print(f"{label:34}{peak / gib:>10.2f} GiB{seconds:>10.1f}{rows / seconds:>12,.0f}")
    print(
        f"\nrows {rows:,}, partitions {mat['partitions']}, "
        f"entities online {mat['entities_online']:,}"
    )
    verdict = "PASS" if peak < GOAL_BYTES else "FAIL"
    print(f"goal: peak < {GOAL_BYTES / gib:.0f} GiB for {args.events:,} events -> {verdict}")


if __name__ == "__main__":
    main()
