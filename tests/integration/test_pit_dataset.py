"""A training set built from a registered labels dataset and the Parquet offline store.

Real pieces end to end: the dataset is added through ``add_dataset`` (validated, stored,
catalogued in SQLite), the feature partitions are written by ``OfflineStore.write``, and
``historical_features`` reads both.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.datasets import DatasetCatalog, add_dataset, dataset_file, open_catalog
from mlops.errors import DatasetNotFoundError
from mlops.features.definition import FeatureView, Source
from mlops.features.offline import OfflineStore
from mlops.features.pit import historical_features, labels_from_dataset
from mlops.settings import Settings

pytestmark = pytest.mark.integration

DAYS = [date(2024, 5, d) for d in range(1, 6)]


@pytest.fixture
def settings(mlops_home: Path) -> Settings:
    settings = Settings()
    settings.ensure_home()
    return settings


@pytest.fixture
def catalog(settings: Settings) -> Iterator[DatasetCatalog]:
    assert settings.datasets.catalog_url is not None
    catalog = open_catalog(settings.datasets.catalog_url)
    yield catalog
    catalog.engine.dispose()


def views() -> tuple[FeatureView, FeatureView]:
    source = Source(path=Path("events.parquet"))
    spend = FeatureView(
        name="spend",
        entity="user_id",
        timestamp="ts",
        source=source,
        features=("spend",),
        ttl=timedelta(days=2),
    )
    risk = FeatureView(
        name="risk",
        entity="user_id",
        timestamp="event_time",
        source=source,
        features=("risk_score",),
        ttl=timedelta(days=1),
        created_timestamp="loaded_at",
    )
    return spend, risk


def utc(*stamps: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(stamps), utc=True)).astype("datetime64[us, UTC]")


@pytest.fixture
def offline(settings: Settings) -> OfflineStore:
    """Daily spend at noon per user; risk scores, one of which was loaded a day late."""
    spend, risk = views()
    store = OfflineStore(settings.offline_path)
    days = [pd.Timestamp(d.isoformat() + " 12:00", tz="UTC") for d in DAYS]
    store.write(
        spend,
        pd.DataFrame(
            {
                "user_id": ["u1"] * len(days) + ["u2"] * len(days),
                "ts": pd.Series(days * 2).astype("datetime64[us, UTC]"),
                "spend": [10.0 * i for i in range(1, 6)] + [100.0 * i for i in range(1, 6)],
            }
        ),
        DAYS,
    )
    store.write(
        risk,
        pd.DataFrame(
            {
                "user_id": ["u1", "u1", "u2"],
                "event_time": utc("2024-05-03 08:00", "2024-05-03 10:00", "2024-05-03 09:00"),
                "loaded_at": utc("2024-05-03 08:05", "2024-05-04 10:00", "2024-05-03 09:00"),
                "risk_score": [0.1, 0.9, 0.5],
            }
        ),
        DAYS,
    )
    return store


def add_labels(settings: Settings, catalog: DatasetCatalog, tmp_path: Path, frame: pd.DataFrame):
    path = tmp_path / "labels.csv"
    frame.to_csv(path, index=False)
    return add_dataset(
        settings=settings,
        catalog=catalog,
        path=path,
        name="fraud-labels",
        entity="user_id",
        timestamp="labelled_at",
    )


LABELS = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u1", "u3", "u1"],
        "labelled_at": [
            "2024-05-03T13:00:00Z",  # spend of 05-03; risk 0.1 (the 10:00 row is not loaded)
            "2024-05-03T09:00:00Z",  # spend of 05-02; risk loaded at that very instant
            "2024-05-04T10:00:00Z",  # the late 10:00 row, loaded now, exactly a TTL old
            "2024-05-04T11:00:00Z",  # an entity without features
            "2024-05-03T21:00:00Z",  # risk 0.1 still: the later 10:00 row is not loaded yet
        ],
        "is_fraud": [0, 1, 0, 0, 1],
    }
)


def test_training_set_from_a_registered_dataset(
    settings: Settings, catalog: DatasetCatalog, offline: OfflineStore, tmp_path: Path
) -> None:
    record = add_labels(settings, catalog, tmp_path, LABELS)
    labels, entity, timestamp = labels_from_dataset(settings, "fraud-labels")
    assert (entity, timestamp) == ("user_id", "labelled_at")
    assert len(labels) == record.rows == 5

    spend, risk = views()
    training = historical_features(
        labels, entity=entity, timestamp=timestamp, views=[spend, risk], offline=offline
    )
    assert list(training.columns) == [
        "user_id",
        "labelled_at",
        "is_fraud",
        "spend__feature_timestamp",
        "spend",
        "risk__feature_timestamp",
        "risk_score",
    ]
    assert training["user_id"].tolist() == ["u1", "u2", "u1", "u3", "u1"]
    assert training["is_fraud"].tolist() == [0, 1, 0, 0, 1]
    np.testing.assert_array_equal(training["spend"], [30.0, 200.0, 30.0, np.nan, 30.0])
    np.testing.assert_array_equal(training["risk_score"], [0.1, 0.5, 0.9, np.nan, 0.1])
    assert training["risk__feature_timestamp"].tolist()[:2] == [
        pd.Timestamp("2024-05-03 08:00Z"),
        pd.Timestamp("2024-05-03 09:00Z"),
    ]

    # the same from the dataset's stored Parquet file
    from_file = historical_features(
        dataset_file(settings, record),
        entity=entity,
        timestamp=timestamp,
        views=[spend, risk],
        offline=offline,
    )
    pd.testing.assert_frame_equal(from_file, training)


def test_labels_from_a_dataset_version(
    settings: Settings, catalog: DatasetCatalog, offline: OfflineStore, tmp_path: Path
) -> None:
    add_labels(settings, catalog, tmp_path, LABELS)
    add_labels(settings, catalog, tmp_path, LABELS.iloc[:2])
    first, _, _ = labels_from_dataset(settings, "fraud-labels", version=1)
    latest, _, _ = labels_from_dataset(settings, "fraud-labels")
    assert (len(first), len(latest)) == (5, 2)
    with pytest.raises(DatasetNotFoundError, match="no version 7"):
        labels_from_dataset(settings, "fraud-labels", version=7)
    with pytest.raises(DatasetNotFoundError, match="no dataset named 'nope'"):
        labels_from_dataset(settings, "nope")
