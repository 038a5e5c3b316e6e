from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.errors import SchemaError
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


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def build_training_set(spec: ModelSpec, offline_root: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """Label rows joined point-in-time with every view of ``spec`` (offline store)."""
    return historical_features(
        labels,
        entity=spec.entity,
        timestamp=spec.timestamp,
        views=list(spec.views),
        offline=OfflineStore(offline_root),
    )
