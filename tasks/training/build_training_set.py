from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from mlops.errors import SchemaError
from mlops.features.definition import FeatureView
from mlops.features.offline import OfflineStore
from mlops.features.pit import historical_features, labels_from_dataset
from mlops.features.source import read_events, to_utc
from mlops.settings import Settings
from mlops.specs import ModelSpec


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def load_labels(
    spec: ModelSpec,
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    dataset: str | None = None,
) -> pd.DataFrame:
    """Label rows in [start, end): the spec's label table, or a registered dataset's rows
    (``name`` or ``name@version``), with the spec's entity/timestamp/label columns."""
    if dataset is None:
        return read_events(
            spec.labels,
            columns=[spec.entity, spec.timestamp, spec.label],
            timestamp=spec.timestamp,
            start=start,
            end=end,
        )
    name, _, version = dataset.partition("@")
    frame, entity, timestamp = labels_from_dataset(
        settings, name, int(version) if version else None
    )
    if spec.label not in frame.columns:
        raise SchemaError(
            f"dataset {dataset!r} has no label column {spec.label!r} "
            f"(it has {', '.join(map(str, frame.columns))})"
        )
    frame = frame.rename(columns={entity: spec.entity, timestamp: spec.timestamp})
    frame = frame[[spec.entity, spec.timestamp, spec.label]]
    stamps = pd.to_datetime(frame[spec.timestamp], utc=True)
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= stamps >= to_utc(start)
    if end is not None:
        keep &= stamps < to_utc(end)
    return frame[keep].reset_index(drop=True)


def training_set_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The cache key of :func:`build_training_set`: what its output depends on.

    - the model spec (name, entity, timestamp and label columns) and its feature view
      versions (a version is the hash of the view's definition);
    - the offline store: its folder and, per view version, every partition's day, size
      and modification time (a day materialized again is a new input);
    - the labels: their window (first and last timestamp), row count and a hash of their
      content, which stands for the labels dataset version (the same rows from the spec's
      table or from ``dataset@version`` give the same training set).
    """
    spec: ModelSpec = parameters["spec"]
    store = OfflineStore(Path(parameters["offline_root"]).resolve())
    labels: pd.DataFrame = parameters["labels"]
    stamps = labels[spec.timestamp] if len(labels) else pd.Series([], dtype=object)
    content = pd.util.hash_pandas_object(labels, index=False).to_numpy()
    parts = {
        "model": [spec.name, spec.entity, spec.timestamp, spec.label],
        "views": [view.ref for view in spec.views],
        "offline": {
            "root": str(store.root),
            "partitions": {view.ref: _partitions(store, view) for view in spec.views},
        },
        "labels": {
            "window": [str(stamps.min()), str(stamps.max())] if len(labels) else [],
            "rows": len(labels),
            "columns": list(map(str, labels.columns)),
            "sha256": hashlib.sha256(content.tobytes()).hexdigest(),
        },
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _partitions(store: OfflineStore, view: FeatureView) -> list[list[object]]:
    """``[day, size, mtime_ns]`` of each offline partition of ``view``'s version."""
    found = []
    for path in store.files(view):
        stat = path.stat()
        found.append([path.parent.name, stat.st_size, stat.st_mtime_ns])
    return found


TRAINING_SET_CACHE: CachePolicy = TASK_SOURCE + CachePolicy.from_cache_key_fn(training_set_key)
"""The task's code and :func:`training_set_key`: a change to either is a new key."""


@task(
    cache_policy=TRAINING_SET_CACHE,
    # the result goes to Prefect's local result storage, PREFECT_HOME/storage (the CLI
    # sets PREFECT_HOME to <MLOPS_HOME>/prefect), where the next run with the same key
    # reads it instead of joining again; PREFECT_TASKS_REFRESH_CACHE=true recomputes
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
)
def build_training_set(spec: ModelSpec, offline_root: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """Label rows joined point-in-time with every view of ``spec`` (offline store).

    Cached: the same spec, view versions, offline partitions and labels (window and
    content) reuse the persisted training set of an earlier run (see
    :func:`training_set_key`)."""
    return historical_features(
        labels,
        entity=spec.entity,
        timestamp=spec.timestamp,
        views=list(spec.views),
        offline=OfflineStore(offline_root),
    )
