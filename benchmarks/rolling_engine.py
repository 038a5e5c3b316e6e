"""Rolling-window features: the numpy engine vs the DuckDB engine, same events, same rows.

Both compute the demo view (``card_transactions``: 3 plain features and 7 rolling
aggregates over 1 h / 24 h / 7 d) over one Arrow table of synthetic card transactions
held in memory:

* ``numpy``: :func:`mlops.features.rolling.compute_rolling`;
* ``duckdb``: :func:`mlops.features.rolling.compute_rolling_sql`, the query that
  materialization used to run (``feature_sql`` + ORDER BY),
  over the same table instead of a Parquet scan.

The events are drawn with numpy like the demo's (about 0.75 a card a day over 90 days,
whole-second times, amounts in cents, sorted by time), written once as Parquet under
``benchmarks/.work/`` and read back by each engine's own child process, which reports
its best time over ``--repeat`` runs, its peak resident memory (``ru_maxrss``) and how
much of it came after the table was read, and a digest of its result: the two engines
must agree to the bit.

Each size runs twice: one call over the whole table, and one call per 7-day chunk (with
its 7-day look-back) as materialization cuts the window; the time is the sum over the
chunks.

Example::

    .venv/bin/python benchmarks/rolling_engine.py                    # 1M and 10M events
    .venv/bin/python benchmarks/rolling_engine.py --events 1000000 --repeat 5
    .venv/bin/python benchmarks/rolling_engine.py --events 10000000 --chunk-days 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _child
import numpy as np

WORK = Path(__file__).resolve().parent / ".work"
DAYS = 90
EVENTS_PER_ENTITY_PER_DAY = 0.75
END = datetime(2025, 1, 1, tzinfo=UTC)


def source_path(events: int) -> Path:
    return WORK / f"rolling_{events}.parquet"


def generate(events: int, seed: int = 0) -> Path:
    """A Parquet file of ``events`` card transactions over 90 days (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = source_path(events)
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entities = max(1, round(events / (DAYS * EVENTS_PER_ENTITY_PER_DAY)))
    end_s = int(END.timestamp())
    seconds = np.sort(rng.integers(end_s - DAYS * 86_400, end_s, events))
    card = rng.integers(0, entities, events)
    level = rng.lognormal(3.8, 0.6, entities)[card]  # each card its own spending level
    table = pa.table(
        {
            "transaction_id": pa.array(np.arange(events)).cast(pa.string()),
            "card_id": pa.array(card).cast(pa.string()),
            "event_timestamp": pa.array(seconds * 1_000_000).cast(pa.timestamp("us", "UTC")),
            "amount": np.round(level * rng.lognormal(0.0, 0.5, events), 2),
            "is_online": (rng.random(events) < 0.27).astype(np.int64),
            "distance_km": np.round(rng.lognormal(1.5, 1.2, events), 3),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=1_000_000)
    tmp.replace(path)
    return path


def digest(table: object) -> str:
    """sha256 of a table's values, null masks and schema (not of how it is chunked)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    assert isinstance(table, pa.Table)
    h = hashlib.sha256(str(table.schema).encode())
    for column in table.itercolumns():
        array = column.combine_chunks()
        h.update(np.asarray(array.is_valid()).tobytes())
        if pa.types.is_string(array.type):
            array = array.fill_null("")
            h.update(np.asarray(pc.binary_length(array)).tobytes())
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)
            first, last = offsets[array.offset], offsets[array.offset + len(array)]
            h.update(memoryview(array.buffers()[2])[first:last])
        elif pa.types.is_timestamp(array.type):
            h.update(np.asarray(array.cast(pa.int64()).fill_null(0)).tobytes())
        else:
            h.update(np.asarray(array.fill_null(0.0)).tobytes())
    return h.hexdigest()[:16]


def chunks(events: object, view: object, days: int) -> list[tuple[object, datetime]]:
    """The events of each ``days``-day chunk with its look-back, and the chunk's start.

    As materialization cuts its window (whole UTC days from the first event's day).
    """
    import pyarrow as pa

    from mlops.features.definition import FeatureView

    assert isinstance(events, pa.Table) and isinstance(view, FeatureView)
    stamps = events[view.timestamp].cast(pa.int64()).to_numpy()
    day_us = 86_400_000_000
    look_back = int(view.max_window.total_seconds()) * 1_000_000
    out = []
    for start in range(int(stamps[0]) // day_us * day_us, int(stamps[-1]) + 1, days * day_us):
        lo, hi = np.searchsorted(stamps, [start - look_back, start + days * day_us])
        out.append(
            (events.slice(int(lo), int(hi - lo)), datetime.fromtimestamp(start // 10**6, UTC))
        )
    return out


def child(
    engine: str, source: str, repeat: int, chunk_days: int, dictionary_keys: bool
) -> dict[str, object]:
    """Run in a child process: read the events, time the engine, report memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops.features.definition import Source
    from mlops.features.rolling import compute_rolling, compute_rolling_sql
    from mlops.specs import card_transactions_view

    view = card_transactions_view(Source.from_path(source))
    events = pq.read_table(
        source,
        columns=view.source_columns,
        read_dictionary=[view.entity] if dictionary_keys else None,
    )
    work = chunks(events, view, chunk_days) if chunk_days else [(events, None)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run = compute_rolling if engine == "numpy" else compute_rolling_sql
    best = float("inf")
    results: list[pa.Table] = []
    for _ in range(repeat):
        results = []  # the previous results are not held while the next are computed
        started = time.perf_counter()
        for part, start in work:
            results.append(run(view, part, start=start))
        best = min(best, time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = pa.concat_tables(results)
    return {
        "rows": result.num_rows,
        "calls": len(work),
        "seconds": best,
        "peak_rss_bytes": peak,
        "above_input_bytes": peak - before,
        "digest": digest(result),
    }


def run_child(
    engine: str, path: Path, repeat: int, chunk_days: int, dictionary_keys: bool
) -> dict[str, object]:
    flags = [engine, str(path), str(repeat), str(chunk_days), str(int(dictionary_keys))]
    return _child.run_child(__file__, *flags)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="table sizes (default: 1M and 10M)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine; best is kept")
    parser.add_argument(
        "--chunk-days",
        type=int,
        nargs="+",
        default=[0, 7],
        help="0: one call over the whole table; N: one call per N-day chunk and its "
        "look-back, as materialization makes them (default: 0 and 7)",
    )
    parser.add_argument(
        "--dictionary-keys",
        action="store_true",
        help="read the entity key dictionary-encoded from Parquet (read_dictionary)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, source, repeat, chunk_days, dictionary_keys = args.child
        result = child(engine, source, int(repeat), int(chunk_days), dictionary_keys == "1")
        print(json.dumps(result))
        return

    mib = 1024**2
    header = (
        f"{'events':>12} {'calls':>13} {'engine':>7} {'seconds':>9} {'events/s':>12} "
        f"{'peak RSS':>10} {'above input':>12} {'speed-up':>9}  result"
    )
    lines = []
    for events in args.events:
        print(f"{events:,} events: generating once if needed", file=sys.stderr, flush=True)
        path = generate(events)
        for chunk_days in args.chunk_days:
            results = {}
            for engine in ("duckdb", "numpy"):
                print(f"  {engine}, chunk days {chunk_days}", file=sys.stderr, flush=True)
                results[engine] = run_child(
                    engine, path, args.repeat, chunk_days, args.dictionary_keys
                )
            same = results["numpy"]["digest"] == results["duckdb"]["digest"]
            duck_s = float(str(results["duckdb"]["seconds"]))
            calls = (
                "1 (whole)" if not chunk_days else f"{results['numpy']['calls']} ({chunk_days} d)"
            )
            for engine, r in results.items():
                seconds = float(str(r["seconds"]))
                rate = int(str(r["rows"])) / seconds
                ratio = f"{duck_s / seconds:>8.1f}x" if engine == "numpy" else f"{'':>9}"
                lines.append(
                    f"{events:>12,} {calls:>13} {engine:>7} {seconds:>9.3f} {rate:>12,.0f} "
                    f"{int(str(r['peak_rss_bytes'])) / mib:>7,.0f} MiB "
                    f"{int(str(r['above_input_bytes'])) / mib:>8,.0f} MiB {ratio}  "
                    + ("identical" if same else "DIFFERENT")
                )
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
