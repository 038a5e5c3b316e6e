"""Time our point-in-time join against a hand-written DuckDB ``ASOF JOIN`` of the same tables.

Generates (deterministically, with numpy) one feature view of ``--rows`` rows over
``--entities`` entities and ``--features`` float features across ``--days`` days,
written as offline-store partitions, and ``--labels`` label rows; then, in the same
process, runs ``historical_features`` (ours) and the DuckDB query ``--repeat`` times
each (alternating), checks that the two agree exactly on a sample of 10,000 label rows
(NaN equal to NaN) and prints best and median seconds and the peak resident memory of
each. The goal: ours within 2x of DuckDB at 1M labels x 10M feature rows.

``--created`` adds a created time (when each row arrived, sometimes hours late); the
DuckDB reference then orders each entity's rows by availability and keeps the running
newest row before its ASOF JOIN (a window pass), as our engine does.

Example::

    python benchmarks/pit_ours.py                            # 1M labels x 10M rows
    python benchmarks/pit_ours.py --rows 1000000 --labels 100000 --created
    python benchmarks/pit_ours.py --root /tmp/pit --keep     # reuse the data next time

``generate``, ``run_ours`` and ``run_duckdb`` are importable (``benchmarks/bench_pit.py``
adds Feast to the same comparison).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from mlops.features.definition import FeatureView, Source
from mlops.features.offline import OfflineStore
from mlops.features.pit import feature_timestamp_column, historical_features

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY_US = 86_400_000_000
ENTITY = "entity_id"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"
LABEL_ID = "label_id"
TTL = timedelta(days=7)
GOAL = 2.0
GENERATOR_VERSION = 1  # bump when generate() makes other data from the same arguments


@dataclass(frozen=True)
class BenchData:
    """What :func:`generate` wrote: the view, its offline store, the labels file."""

    root: Path
    view: FeatureView
    offline_root: Path
    labels_path: Path  # columns: entity_id, event_timestamp, label_id, label
    rows: int
    entities: int
    labels: int
    days: int
    created: bool

    @property
    def offline(self) -> OfflineStore:
        return OfflineStore(self.offline_root)

    @property
    def files(self) -> list[Path]:
        store = self.offline
        return [store.partition_path(self.view, d) for d in store.days(self.view)]


def bench_view(*, features: int = 20, created: bool = False) -> FeatureView:
    return FeatureView(
        name="bench",
        entity=ENTITY,
        timestamp=TIMESTAMP,
        source=Source(path=Path("unused.parquet")),
        features=tuple(f"f{i:02d}" for i in range(features)),
        ttl=TTL,
        created_timestamp=CREATED if created else None,
    )


def _keys(codes: np.ndarray, text: bool) -> np.ndarray:
    return np.char.add("e", codes.astype(str)).astype(object) if text else codes


def _stamps(us: np.ndarray) -> pd.Series:
    return pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC")


def generate(
    root: Path,
    *,
    rows: int = 10_000_000,
    entities: int = 100_000,
    labels: int = 1_000_000,
    features: int = 20,
    days: int = 30,
    seed: int = 0,
    created: bool = False,
    text_keys: bool = True,
) -> BenchData:
    """Write the feature partitions and the labels under ``root`` (reused when a previous
    call with the same arguments left them there)."""
    root = Path(root)
    params = {
        "generator": GENERATOR_VERSION,
        "rows": rows,
        "entities": entities,
        "labels": labels,
        "features": features,
        "days": days,
        "seed": seed,
        "created": created,
        "text_keys": text_keys,
    }
    view = bench_view(features=features, created=created)
    data = BenchData(
        root=root,
        view=view,
        offline_root=root / "offline",
        labels_path=root / "labels.parquet",
        rows=rows,
        entities=entities,
        labels=labels,
        days=days,
        created=created,
    )
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == params:
        return data
    shutil.rmtree(root / "offline", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = data.offline
    start_us = int(pd.Timestamp(START).value // 1000)
    for d in range(days):
        n = rows // days + (1 if d < rows % days else 0)
        ts = start_us + d * DAY_US + rng.integers(0, DAY_US, n)
        frame = pd.DataFrame(
            {ENTITY: _keys(rng.integers(0, entities, n), text_keys), TIMESTAMP: _stamps(ts)}
        )
        if created:
            # most rows arrive within minutes; one in ten hours late
            late = (rng.random(n) < 0.1) * rng.exponential(6 * 3600e6, n)
            delay = rng.exponential(120e6, n) + late
            frame[CREATED] = _stamps(ts + delay.astype(np.int64))
        values = rng.standard_normal((n, features))
        for i, name in enumerate(view.feature_names):
            frame[name] = values[:, i]
        store.write(view, frame, [(START + timedelta(days=d)).date()])
    # labels from day 2 to the last day; 1% of entities have no features at all
    ts = start_us + DAY_US + rng.integers(0, (days - 1) * DAY_US, labels)
    label_frame = pd.DataFrame(
        {
            ENTITY: _keys(rng.integers(0, int(entities * 1.01) + 1, labels), text_keys),
            TIMESTAMP: _stamps(ts),
            LABEL_ID: np.arange(labels),
            "label": rng.integers(0, 2, labels),
        }
    )
    label_frame.to_parquet(data.labels_path, index=False)
    manifest.write_text(json.dumps(params))
    return data


def run_ours(data: BenchData) -> pd.DataFrame:
    """``historical_features`` from the labels file and the offline store."""
    return historical_features(
        data.labels_path,
        entity=ENTITY,
        timestamp=TIMESTAMP,
        views=[data.view],
        offline=data.offline,
    )


def run_duckdb(data: BenchData) -> pd.DataFrame:
    """A hand-written DuckDB ``ASOF LEFT JOIN`` with the TTL, on the same files.

    Not in label order (nothing asks DuckDB for it); ties on the feature timestamp are
    not broken (the generated data has practically none).
    """
    view = data.view
    ttl = f"INTERVAL {int(TTL.total_seconds())} SECONDS"
    fresh = f"f.{TIMESTAMP} >= l.{TIMESTAMP} - {ttl}"
    features = ", ".join(f"CASE WHEN {fresh} THEN f.{n} END AS {n}" for n in view.feature_names)
    fts = feature_timestamp_column(view)
    if data.created:
        rows = f"""(
            SELECT * FROM (
                SELECT *, max({TIMESTAMP}) OVER (
                    PARTITION BY {ENTITY} ORDER BY greatest({TIMESTAMP}, {CREATED})
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS top,
                    greatest({TIMESTAMP}, {CREATED}) AS available
                FROM read_parquet($files))
            WHERE {TIMESTAMP} = top)"""
        until = "available"
    else:
        rows, until = "read_parquet($files)", TIMESTAMP
    query = f"""
        SELECT l.*, CASE WHEN {fresh} THEN f.{TIMESTAMP} END AS {fts}, {features}
        FROM read_parquet($labels) l ASOF LEFT JOIN {rows} f
          ON l.{ENTITY} = f.{ENTITY} AND l.{TIMESTAMP} >= f.{until}
    """
    con = duckdb.connect()
    try:
        params = {"files": [str(p) for p in data.files], "labels": str(data.labels_path)}
        return con.execute(query, params).df()
    finally:
        con.close()


def disagreements(
    ours: pd.DataFrame, theirs: pd.DataFrame, view: FeatureView, *, sample: int, seed: int = 0
) -> int:
    """Label rows of a random sample whose feature timestamp or features differ."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(len(ours), size=min(sample, len(ours)), replace=False)
    a = ours.set_index(LABEL_ID).loc[ids]
    b = theirs.set_index(LABEL_ID).loc[ids]
    bad = np.zeros(len(ids), dtype=bool)
    fts = feature_timestamp_column(view)
    a_ts = pd.to_datetime(a[fts], utc=True).astype("datetime64[ns, UTC]")
    b_ts = pd.to_datetime(b[fts], utc=True).astype("datetime64[ns, UTC]")
    both_nat = a_ts.isna().to_numpy() & b_ts.isna().to_numpy()
    bad |= ~((a_ts.to_numpy() == b_ts.to_numpy()) | both_nat)
    for name in view.feature_names:
        x, y = a[name].to_numpy(dtype=float), b[name].to_numpy(dtype=float)
        bad |= ~((x == y) | (np.isnan(x) & np.isnan(y)))
    return int(bad.sum())


class PeakRss:
    """The peak resident memory of this process while the block runs (sampled)."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self.peak = self.now()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_rss: int = 0  # the process's, while this ran
    peak_added: int = 0  # over what the process held when this started
    result: pd.DataFrame | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def compare(
    data: BenchData, *, repeat: int = 3, sample: int = 10_000
) -> tuple[Timing, Timing, int]:
    """Time ours and DuckDB ``repeat`` times each, alternating; and their disagreements."""
    runners: list[tuple[str, Callable[[BenchData], pd.DataFrame]]] = [
        ("ours (historical_features)", run_ours),
        ("DuckDB ASOF JOIN", run_duckdb),
    ]
    timings = {name: Timing(name) for name, _ in runners}
    for _ in range(repeat):
        for name, run in runners:
            t = timings[name]
            t.result = None  # let the previous result go before measuring memory
            with PeakRss() as rss:
                before = rss.peak
                started, cpu = time.perf_counter(), time.process_time()
                t.result = run(data)
                t.seconds.append(time.perf_counter() - started)
                t.cpu_seconds.append(time.process_time() - cpu)
            t.peak_rss = max(t.peak_rss, rss.peak)
            t.peak_added = max(t.peak_added, rss.peak - before)
    ours, duck = timings[runners[0][0]], timings[runners[1][0]]
    assert ours.result is not None and duck.result is not None
    bad = disagreements(ours.result, duck.result, data.view, sample=sample)
    return ours, duck, bad


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="feature rows (10M)")
    parser.add_argument("--labels", type=int, default=1_000_000, help="label rows (1M)")
    parser.add_argument("--entities", type=int, default=100_000, help="entities (100k)")
    parser.add_argument("--features", type=int, default=20, help="float features (20)")
    parser.add_argument("--days", type=int, default=30, help="days of partitions (30)")
    parser.add_argument("--created", action="store_true", help="rows carry a created time")
    parser.add_argument("--int-keys", action="store_true", help="integer entity keys, not text")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (3)")
    parser.add_argument("--sample", type=int, default=10_000, help="label rows compared")
    parser.add_argument("--root", type=Path, help="data folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data for the next run")
    args = parser.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="pit-bench-"))
    try:
        started = time.perf_counter()
        data = generate(
            root,
            rows=args.rows,
            entities=args.entities,
            labels=args.labels,
            features=args.features,
            days=args.days,
            created=args.created,
            text_keys=not args.int_keys,
        )
        summary = {k: v for k, v in asdict(data).items() if k in ("rows", "labels", "entities")}
        print(
            f"data: {summary} days={data.days} features={args.features} "
            f"created={data.created} text_keys={not args.int_keys} "
            f"({time.perf_counter() - started:.1f} s to generate or find)"
        )
        ours, duck, bad = compare(data, repeat=args.repeat, sample=args.sample)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"{'engine':<28}{'best s':>8}{'median s':>10}{'cpu s':>8}"
        f"{'peak RSS MiB':>14}{'(added)':>10}"
    )
    for t in (ours, duck):
        print(
            f"{t.name:<28}{t.best:>8.2f}{t.median:>10.2f}{min(t.cpu_seconds):>8.2f}"
            f"{t.peak_rss / 2**20:>14,.0f}{t.peak_added / 2**20:>10,.0f}"
        )
    ratio = ours.best / duck.best
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"ours / DuckDB (best): {ratio:.2f}x (goal <= {GOAL:.0f}x: {verdict})")
    print(f"agreement on {min(args.sample, data.labels):,} sampled labels: {bad} rows differ")
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"process peak RSS: {usage / 2**20:,.0f} MiB")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
