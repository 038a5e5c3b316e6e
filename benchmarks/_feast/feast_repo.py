"""A Feast repository made in code, shared by the Feast-side benchmark scripts.

Runs in the Feast venv only (see ``benchmarks/feast_env.py``): it imports Feast and its
dependencies, never ``mlops``. :func:`build_store` writes ``feature_store.yaml``
(``provider: local``, the ``file`` offline store, Redis online store on DB ``redis_db``)
into a work folder, declares one Entity, a FileSource on the given Parquet file and a
FeatureView with the given float features, and applies them with ``FeatureStore.apply``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import feast
import pyarrow.parquet as pq
import redis
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String

PROJECT = "mlops_bench"
VIEW = "bench_view"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def log(message: str) -> None:
    print(f"[feast] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as the one JSON object on the last line of stdout."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    payload = {"feast_version": feast.__version__, "self_peak_rss_mb": peak_kib / 1024, **result}
    print(json.dumps(payload), flush=True)


def flush_db(redis_db: int) -> None:
    """Empty Redis DB ``redis_db`` (never DB 0, where the platform's keys live)."""
    if redis_db == 0:
        raise SystemExit("refusing to flush Redis DB 0: give the Feast side its own DB")
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db).flushdb()


def db_keys(redis_db: int) -> int:
    return int(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db).dbsize())


def feature_columns(source: Path, entity: str, timestamp: str) -> list[str]:
    """Every column of ``source`` but the entity key and the timestamp."""
    names = pq.read_schema(source).names
    return [n for n in names if n not in (entity, timestamp)]


def build_store(
    *,
    work: Path,
    source: Path,
    entity: str,
    timestamp: str,
    features: list[str],
    ttl_s: int,
    redis_db: int,
    flush: bool = True,
) -> tuple[FeatureStore, FeatureView]:
    """A fresh Feast repo in ``work`` over ``source``, applied; Redis DB flushed first."""
    started = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "feature_store.yaml").write_text(
        f"""project: {PROJECT}
registry: {work / "registry.db"}
provider: local
offline_store:
  type: file
online_store:
  type: redis
  connection_string: "{REDIS_HOST}:{REDIS_PORT},db={redis_db}"
entity_key_serialization_version: 3
"""
    )
    if flush:
        flush_db(redis_db)
    store = FeatureStore(repo_path=str(work))
    key = Entity(name=entity, join_keys=[entity], value_type=ValueType.STRING)
    src = FileSource(name=f"{VIEW}_source", path=str(source.resolve()), timestamp_field=timestamp)
    view = FeatureView(
        name=VIEW,
        entities=[key],
        ttl=timedelta(seconds=ttl_s),
        schema=[
            Field(name=entity, dtype=String),
            *(Field(name=f, dtype=Float64) for f in features),
        ],
        source=src,
        online=True,
    )
    store.apply([key, view])
    log(
        f"feast {feast.__version__}: applied {VIEW} ({len(features)} features, ttl {ttl_s} s, "
        f"Redis db {redis_db}) in {time.perf_counter() - started:.2f} s"
    )
    return store, view


def add_store_args(p: argparse.ArgumentParser, *, ttl_required: bool = False) -> None:
    """The options every Feast-side script takes to build its store."""
    p.add_argument("--source", type=Path, required=True, help="Parquet of feature rows")
    p.add_argument("--entity", default="card_id")
    p.add_argument("--timestamp", default="event_timestamp", help="feature rows' timestamp")
    p.add_argument("--features", default="", help="comma-separated (default: all columns)")
    if ttl_required:
        p.add_argument("--ttl-s", type=int, required=True, help="the view's ttl, as ours")
    else:
        p.add_argument("--ttl-s", type=int, default=7 * 86_400)
    p.add_argument("--redis-db", type=int, default=3)
    p.add_argument("--work", type=Path, required=True)


def store_from_args(a: argparse.Namespace, *, flush: bool = True) -> tuple[FeatureStore, list[str]]:
    """The store the options of :func:`add_store_args` describe, and its feature names."""
    features = (
        a.features.split(",") if a.features else feature_columns(a.source, a.entity, a.timestamp)
    )
    store, _ = build_store(
        work=a.work,
        source=a.source,
        entity=a.entity,
        timestamp=a.timestamp,
        features=features,
        ttl_s=a.ttl_s,
        redis_db=a.redis_db,
        flush=flush,
    )
    return store, features


def refs(features: list[str]) -> list[str]:
    return [f"{VIEW}:{f}" for f in features]
