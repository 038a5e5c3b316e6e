"""The flows against real backends: a Prefect test API, MLflow on SQLite, Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.evaluate import evaluate
from flows.materialize import materialize
from flows.train import train
from mlops.data.generate import generate_transactions, write_events
from mlops.errors import SchemaError, TrainingError
from mlops.features.offline import OfflineStore
from mlops.features.online import build_online_store
from mlops.registry import CHALLENGER, CHAMPION, Tags
from mlops.settings import Settings
from mlops.specs import get_spec, transactions_path

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

END = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def data(mlops_home: Path) -> Settings:
    settings = Settings()
    settings.ensure_home()
    events = generate_transactions(n_entities=800, days=28, seed=2, end=END)
    write_events(events, Path(transactions_path(settings)))
    return settings


@pytest.fixture
def redis_store(
    data: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__URL", redis_url)
    monkeypatch.setenv("MLOPS_ONLINE_STORE__KEY_PREFIX", prefix)
    settings = Settings()
    yield settings
    store = build_online_store(settings.online_store)
    store.teardown("card_transactions")
    store.close()


def test_materialize_into_redis_is_idempotent_and_matches_offline(redis_store: Settings) -> None:
    settings = redis_store
    view = get_spec("fraud_detector", settings).views[0]
    first = materialize(view_name=view.name)
    offline = OfflineStore(settings.offline_path)
    before = offline.read(view)
    files_before = sorted(p.name for p in offline.view_dir(view).rglob("*") if p.is_file())

    second = materialize(view_name=view.name)
    after = offline.read(view)
    files_after = sorted(p.name for p in offline.view_dir(view).rglob("*") if p.is_file())
    assert first == second
    assert first["online_store"] == "redis"
    assert files_before == files_after  # replaced, not added; no temp files left
    pd.testing.assert_frame_equal(before, after)
    assert len(after) == len(pd.read_parquet(transactions_path(settings)))

    latest = (
        after.sort_values(view.timestamp, kind="stable")
        .drop_duplicates(view.entity, keep="last")
        .set_index(view.entity)
    )
    keys = list(latest.index[:50])
    store = build_online_store(settings.online_store)
    try:
        online = store.read(view=view.name, keys=keys)
    finally:
        store.close()
    for key in keys:
        row = online[key]
        assert row is not None
        assert row.version == view.version
        expected = latest.loc[key, view.feature_names].to_numpy(dtype=float)
        got = np.array([row.values[f] for f in view.feature_names])
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_materialize_a_window_writes_whole_days(data: Settings) -> None:
    view = get_spec("fraud_detector", data).views[0]
    result = materialize(
        view_name=view.name,
        start=datetime(2026, 1, 10, 13, tzinfo=UTC),
        end=datetime(2026, 1, 12, 2, tzinfo=UTC),
    )
    assert result["window"] == "2026-01-10T00:00:00+00:00/2026-01-13T00:00:00+00:00"
    days = OfflineStore(data.offline_path).days(view)
    assert [d.isoformat() for d in days] == ["2026-01-10", "2026-01-11", "2026-01-12"]


def test_rejected_challenger_keeps_the_champion(data: Settings) -> None:
    materialize()
    first = train(epochs=3, batch_size=128, seed=2)
    assert evaluate()["promoted"] is True
    second = train(epochs=1, batch_size=4096, seed=9)
    result = evaluate(min_roc_auc=0.9999)

    client = MlflowClient(tracking_uri=data.tracking_uri)
    champion = client.get_model_version_by_alias("fraud_detector", CHAMPION)
    challenger = client.get_model_version_by_alias("fraud_detector", CHALLENGER)
    assert result["promoted"] is False
    assert "below the minimum 0.9999" in result["reason"]
    assert str(champion.version) == first["version"]
    assert str(challenger.version) == second["version"]
    assert challenger.tags[Tags.GATE_DECISION] == "rejected"
    assert challenger.tags[Tags.GATE_REASON] == result["reason"]
    assert result["champion_version_before"] == first["version"]


def test_failed_training_marks_the_mlflow_run_failed(data: Settings) -> None:
    materialize()
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train(epochs=2, learning_rate=1e30)  # diverges: the loss stops being finite
    client = MlflowClient(tracking_uri=data.tracking_uri)
    experiment = client.get_experiment_by_name(data.mlflow.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_evaluate_without_challenger_says_what_to_do(data: Settings) -> None:
    with pytest.raises(Exception, match="run the train flow"):
        evaluate()


def test_invalid_training_parameters_fail_before_any_run(data: Settings) -> None:
    with pytest.raises(TrainingError, match="learning_rate must be a positive number"):
        train(learning_rate=float("nan"))
    client = MlflowClient(tracking_uri=data.tracking_uri)
    experiment = client.get_experiment_by_name(data.mlflow.experiment)
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_train_on_labels_from_a_registered_dataset(data: Settings, tmp_path: Path) -> None:
    from mlops.datasets.catalog import open_catalog
    from mlops.datasets.service import add_dataset

    materialize()
    events = pd.read_parquet(transactions_path(data))
    labels = events[["card_id", "event_timestamp", "is_fraud"]].rename(
        columns={"card_id": "card", "event_timestamp": "labelled_at"}
    )
    labels = labels[labels["labelled_at"] >= labels["labelled_at"].min() + pd.Timedelta(days=7)]
    csv = tmp_path / "labels.csv"
    labels.to_csv(csv, index=False)
    assert data.datasets.catalog_url is not None
    catalog = open_catalog(data.datasets.catalog_url)
    try:
        record = add_dataset(
            settings=data,
            catalog=catalog,
            path=csv,
            name="fraud_labels",
            entity="card",
            timestamp="labelled_at",
        )
    finally:
        catalog.engine.dispose()
    result = train(epochs=1, batch_size=512, labels_dataset=f"fraud_labels@{record.version}")
    first, last = result["data_window"].split("/")
    assert pd.Timestamp(first) == pd.Timestamp(labels["labelled_at"].min())
    assert pd.Timestamp(last) == pd.Timestamp(labels["labelled_at"].max())
    with pytest.raises(SchemaError, match="no label column 'is_fraud'"):
        unlabelled = tmp_path / "unlabelled.csv"
        labels.drop(columns=["is_fraud"]).to_csv(unlabelled, index=False)
        catalog = open_catalog(data.datasets.catalog_url)
        try:
            add_dataset(
                settings=data,
                catalog=catalog,
                path=unlabelled,
                name="no_labels",
                entity="card",
                timestamp="labelled_at",
            )
        finally:
            catalog.engine.dispose()
        train(epochs=1, labels_dataset="no_labels")


def test_rollback_undoes_the_evaluate_flows_promotion(data: Settings) -> None:
    from mlops.platform.models import champion_history, rollback

    materialize()
    loose = {"min_roc_auc": 0.0, "max_regression": 1.0}  # gates any model passes
    first = train(epochs=1, batch_size=512, seed=2)
    assert evaluate(**loose)["promoted"] is True
    second = train(epochs=1, batch_size=512, seed=3)
    assert evaluate(**loose)["promoted"] is True

    client = MlflowClient(tracking_uri=data.tracking_uri)
    name = "fraud_detector"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == second["version"]
    assert champion_history(client, name=name) == [first["version"]]

    result = rollback(client, name=name, by="test", reason="the new champion misbehaves")
    assert (result.version, result.previous) == (first["version"], second["version"])
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == first["version"]
    assert champion_history(client, name=name) == []
