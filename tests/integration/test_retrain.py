"""The retrain flow and the Prefect idioms under it, on a real Prefect test API and a
real MLflow (SQLite) registry: walk-forward evaluation, artifacts and tags of the
decision, the training set's cache, and the rollback of a promotion."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.transactions import transaction

from flows.evaluate import evaluate
from flows.materialize import materialize
from flows.retrain import retrain
from flows.train import train
from mlops import events
from mlops.data.generate import generate_transactions, write_events
from mlops.errors import ConfigurationError
from mlops.registry import CHALLENGER, CHAMPION, Tags, version_by_alias
from mlops.settings import Settings
from mlops.specs import get_spec, transactions_path
from tasks.evaluation.promote import promote_version
from tasks.training.build_training_set import build_training_set, load_labels
from tests.integration._registry import new_registry, register_version

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

END = datetime(2026, 2, 1, tzinfo=UTC)
MODEL = "fraud_detector"


@pytest.fixture
def results(tmp_path: Path) -> Iterator[Path]:
    """Persisted task results in this test's folder (not the user's ~/.prefect)."""
    path = tmp_path / "prefect-results"
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: path}):
        yield path


@pytest.fixture
def data(mlops_home: Path, results: Path) -> Settings:
    settings = Settings()
    settings.ensure_home()
    transactions = generate_transactions(n_entities=800, days=28, seed=2, end=END)
    write_events(transactions, Path(transactions_path(settings)))
    return settings


def artifacts_of(flow_run_id: str) -> dict[str, tuple[str, object]]:
    """``{key: (type, data)}`` of the artifacts a flow run created, read from the API."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])
            )
        )
    return {a.key: (a.type or "", a.data) for a in found if a.key}


def promoted_events(since: datetime, version: str) -> int:
    """``mlops.model.promoted`` events of the model for ``version`` since ``since``
    (polled a few seconds: the API stores events asynchronously)."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(
        occurred=EventOccurredFilter.model_validate(
            {"since": since, "until": datetime.now(UTC) + timedelta(minutes=1)}
        ),
        event=EventNameFilter(name=[events.MODEL_PROMOTED]),
        resource=EventResourceFilter(id=[f"mlops.model.{MODEL}"]),
    )
    count = 0
    for _ in range(20):
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=event_filter, limit=50)
        count = sum(1 for e in page.events if str(e.payload.get("version")) == version)
        if count:
            time.sleep(1.0)  # a second copy would arrive by now
            with get_client(sync_client=True) as client:
                page = client.read_events(filter=event_filter, limit=50)
            return sum(1 for e in page.events if str(e.payload.get("version")) == version)
        time.sleep(0.5)
    return count


def test_retrain_on_drift_records_why_and_what_it_decided(data: Settings) -> None:
    # a weak champion (one epoch; promoted with the minimum gate off), so that the
    # retrained model (the train flow's default 8 epochs, same seed) must beat it
    materialize()
    first = train(epochs=1)
    assert evaluate(min_roc_auc=0.0)["promoted"] is True

    payload = {"drift_share": 0.5, "threshold": 0.3, "drifted_features": ["amount"]}
    started = datetime.now(UTC)
    result = retrain(
        model_name=MODEL,
        reason=events.MODEL_DRIFT_DETECTED,
        event_payload=payload,
        folds=3,
    )

    # a new version, after an incremental materialization (only the last recorded day,
    # which may have been partial, is written again: not the 28 days of a full run)
    client = MlflowClient(tracking_uri=data.tracking_uri)
    assert result["challenger_version"] == str(int(first["version"]) + 1)
    (materialized,) = result["materialized"]
    assert materialized["mode"] == "incremental"
    assert materialized.get("up_to_date") or materialized["partitions"] <= 2
    version = client.get_model_version(MODEL, result["challenger_version"])

    # promoted: better than the champion on every fold and above the minimum
    assert result["promoted"] is True, result["gate_reason"]
    assert result["decision"] == "promoted"
    assert result["gate_reason"].startswith("3-fold walk-forward, means over the folds: ROC AUC")
    assert result["gate_reason"].endswith("worse on 0 of 3 folds")

    # its tags carry the reason, this run and the decision with every fold
    tags = version.tags
    assert tags[Tags.RETRAIN_REASON] == events.MODEL_DRIFT_DETECTED
    assert tags[Tags.RETRAIN_FLOW_RUN_ID] == result["flow_run_id"] != ""
    assert '"drift_share": 0.5' in tags[Tags.RETRAIN_TRIGGER]
    assert tags[Tags.GATE_DECISION] == "promoted"
    assert tags[Tags.GATE_REASON] == result["gate_reason"]
    assert tags[Tags.GATE_FOLDS] == "3"
    assert tags[Tags.GATE_FOLDS_WORSE] == "0/3"
    assert len(tags[Tags.GATE_FOLD_ROC_AUC].split(",")) == 3
    assert len(tags[Tags.GATE_CHAMPION_FOLD_ROC_AUC].split(",")) == 3

    # three consecutive folds, challenger and champion scored on each
    folds = result["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3]
    assert all(f["challenger_roc_auc"] > f["champion_roc_auc"] for f in folds)
    assert folds[0]["end"] < folds[1]["start"] and folds[1]["end"] < folds[2]["start"]

    # the aliases are where the decision says
    champion = version_by_alias(client, MODEL, CHAMPION)
    assert champion is not None
    assert str(champion.version) == result["champion_version"] == result["challenger_version"]
    assert result["champion_version_before"] == first["version"]
    assert version_by_alias(client, MODEL, CHALLENGER) is None

    # the artifacts of this run: why it ran, the folds, the decision in words
    found = artifacts_of(result["flow_run_id"])
    kind, why = found["retrain-fraud-detector-trigger"]
    assert kind == "markdown"
    assert events.MODEL_DRIFT_DETECTED in str(why) and "| drift_share | 0.5 |" in str(why)
    kind, table = found["retrain-fraud-detector-folds"]
    assert kind == "table"
    assert "challenger_roc_auc" in str(table) and "champion_roc_auc" in str(table)
    kind, decision = found["retrain-fraud-detector-decision"]
    assert kind == "markdown"
    assert f"# {MODEL} v{result['challenger_version']}: PROMOTED" in str(decision)
    assert result["gate_reason"] in str(decision)

    # one promoted event, from the evaluate subflow: retrain does not send a second
    assert promoted_events(started, result["challenger_version"]) == 1


def test_retrain_refuses_an_unknown_reason_before_any_work(data: Settings) -> None:
    with pytest.raises(ConfigurationError, match="unknown retrain reason 'because'"):
        retrain(reason="because")
    with pytest.raises(ConfigurationError, match="folds must be at least 1, got 0"):
        retrain(reason="manual", folds=0)
    client = MlflowClient(tracking_uri=data.tracking_uri)
    assert client.search_registered_models() == []


@flow(name="build-training-set-thrice")
def build_thrice() -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    settings = Settings()
    spec = get_spec(MODEL, settings)
    labels = load_labels.fn(spec, settings, None, None)
    narrower = labels[labels[spec.timestamp] >= labels[spec.timestamp].min() + timedelta(days=1)]
    states = [
        build_training_set(spec, settings.offline_path, labels, return_state=True),
        build_training_set(spec, settings.offline_path, labels.copy(), return_state=True),
        build_training_set(spec, settings.offline_path, narrower, return_state=True),
    ]
    return [s.name or "" for s in states], states[0].result(), states[1].result()


def test_the_training_set_is_built_once_for_the_same_inputs(data: Settings, results: Path) -> None:
    materialize()
    names, first, second = build_thrice()
    assert names == ["Completed", "Cached", "Completed"]
    pd.testing.assert_frame_equal(first, second)
    assert any(p.is_file() for p in results.rglob("*"))  # persisted where we said

    materialize(mode="full")  # the offline partitions are rewritten: a new key
    names, _, _ = build_thrice()
    assert names[0] == "Completed"


@task
def fail_after_the_alias_moved(client: MlflowClient, name: str) -> None:
    moved = client.get_model_version_by_alias(name, CHAMPION)
    raise RuntimeError(f"the step after the promotion failed (champion was v{moved.version})")


@flow(name="promote-then-fail")
def promote_then_fail(tracking_uri: str, name: str, version: str) -> None:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with transaction():
        promote_version(client, name, version)
        fail_after_the_alias_moved(client, name)


def test_a_failure_after_promotion_puts_the_aliases_back(tmp_path: Path) -> None:
    uri, experiment = new_registry(tmp_path / "mlflow")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = register_version(tracking_uri=uri, experiment_id=experiment, name="m")
    new = register_version(tracking_uri=uri, experiment_id=experiment, name="m", alias=CHALLENGER)

    with pytest.raises(RuntimeError, match=f"champion was v{new}"):
        promote_then_fail(uri, "m", new)
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == old
    assert str(client.get_model_version_by_alias("m", CHALLENGER).version) == new

    # without a champion before, rolling back leaves none
    first = register_version(tracking_uri=uri, experiment_id=experiment, name="n", alias=None)
    with pytest.raises(RuntimeError, match=f"champion was v{first}"):
        promote_then_fail(uri, "n", first)
    assert version_by_alias(client, "n", CHAMPION) is None

    # and with no failure, the promotion stays
    @flow(name="promote-and-succeed")
    def promote_and_succeed() -> None:
        with transaction():
            promote_version(client, "m", new)

    promote_and_succeed()
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == new
    assert version_by_alias(client, "m", CHALLENGER) is None


def test_a_rolled_back_promotion_leaves_the_champion_history_as_it_was(tmp_path: Path) -> None:
    from mlops.platform.models import CHAMPION_HISTORY, champion_history

    uri, experiment = new_registry(tmp_path / "mlflow")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = register_version(tracking_uri=uri, experiment_id=experiment, name="m")
    new = register_version(tracking_uri=uri, experiment_id=experiment, name="m", alias=CHALLENGER)

    # no history before: none after the rollback (not an empty list)
    with pytest.raises(RuntimeError, match=f"champion was v{new}"):
        promote_then_fail(uri, "m", new)
    assert CHAMPION_HISTORY not in (client.get_registered_model("m").tags or {})

    # a history before: exactly that one after the rollback
    client.set_registered_model_tag("m", CHAMPION_HISTORY, '["7"]')
    with pytest.raises(RuntimeError, match=f"champion was v{new}"):
        promote_then_fail(uri, "m", new)
    assert client.get_registered_model("m").tags[CHAMPION_HISTORY] == '["7"]'

    # a promotion that stays pushes the champion it replaced
    @flow(name="promote-and-keep")
    def promote_and_keep() -> None:
        with transaction():
            promote_version(client, "m", new)

    promote_and_keep()
    assert champion_history(client, name="m") == ["7", old]
