"""The monitor flow against real backends: MLflow on SQLite, the request log on SQLite and
Postgres, the Prefect test API (events read back from it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows.monitor import monitor
from mlops import events
from mlops.artifacts import artifact_key
from mlops.errors import NoChampionError
from mlops.monitoring.history import history_engine, recent_runs
from mlops.registry import configure_mlflow, mlflow_client
from mlops.serving.request_log import FeedbackRecord, PredictionRecord, RequestLog
from mlops.settings import Settings
from tasks.training.register import HOLDOUT_ARTIFACT
from tests.integration._registry import FEATURES, TinyFraudModel, register_version

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

MEAN = np.array([50.0, 40.0, 2.0])  # the tiny model's scaling: the training distribution
STD = np.array([30.0, 20.0, 1.5])
MONITOR_EVENTS = [events.MODEL_DRIFT_DETECTED, events.MODEL_PERFORMANCE_DEGRADED]


@dataclass(frozen=True)
class Champion:
    settings: Settings
    name: str
    version: str


def _features(n: int, seed: int, amount_shift_std: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(MEAN, STD, size=(n, len(FEATURES)))
    x[:, 0] += amount_shift_std * STD[0]
    return x.astype(np.float32)


def _champion(settings: Settings) -> Champion:
    """The tiny ONNX model registered as champion, its holdout saved like the train flow's."""
    settings.ensure_home()
    experiment_id = configure_mlflow(settings)
    name = f"monitored_{uuid.uuid4().hex[:8]}"
    version = register_version(
        tracking_uri=settings.tracking_uri, experiment_id=experiment_id, name=name
    )
    client = mlflow_client(settings)
    x = _features(3000, seed=1)
    holdout = pd.DataFrame(x.astype(np.float64), columns=FEATURES)
    holdout.insert(0, "event_timestamp", pd.Timestamp("2026-01-01", tz="UTC"))
    holdout.insert(0, "card_id", [f"card_{i % 97}" for i in range(len(holdout))])
    holdout["is_fraud"] = (np.random.default_rng(2).random(len(holdout)) < 0.1).astype(int)
    folder = settings.home / "holdout-upload"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(HOLDOUT_ARTIFACT).name
    holdout.to_parquet(path, index=False)
    run_id = client.get_model_version(name, version).run_id
    assert run_id
    client.log_artifact(run_id, str(path), artifact_path=str(Path(HOLDOUT_ARTIFACT).parent))
    return Champion(settings=settings, name=name, version=version)


@pytest.fixture
def sqlite_champion(mlops_home: Path) -> Champion:
    return _champion(Settings())


@pytest.fixture
def postgres_champion(
    mlops_home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Champion:
    monkeypatch.setenv("MLOPS_REQUEST_LOG__URL", postgres_url)
    return _champion(Settings())


@pytest.fixture
def open_log(mlops_home: Path) -> Iterator[list[RequestLog]]:
    logs: list[RequestLog] = []
    yield logs
    for log in logs:
        log.close()


def log_traffic(
    champion: Champion,
    *,
    requests: int,
    rows: int,
    seed: int,
    amount_shift_std: float = 0.0,
    labelled: int = 0,
    wrong: int = 0,
    version: str | None = None,
    age: timedelta = timedelta(minutes=30),
) -> list[int]:
    """Log ``requests`` predictions of ``rows`` rows each, scored by the tiny model as the
    app does (features logged), and feedback for the first ``labelled`` rows, ``wrong`` of
    them the opposite of the prediction. Returns the predicted labels."""
    log = RequestLog(champion.settings.request_log)
    log.start()
    x = _features(requests * rows, seed, amount_shift_std)
    with torch.no_grad():
        p = TinyFraudModel()(torch.from_numpy(x)).numpy()[:, 1]
    predicted = (p >= 0.5).astype(int).tolist()
    received = datetime.now(UTC) - age
    feedback = []
    for r in range(requests):
        block = slice(r * rows, (r + 1) * rows)
        request_id = uuid.uuid4().hex
        outputs = [
            {
                "entity": None,
                "index": i,
                "label": label,
                "probability": float(prob),
                "probabilities": [1 - float(prob), float(prob)],
            }
            for i, (label, prob) in enumerate(zip(predicted[block], p[block], strict=True))
        ]
        log.log_prediction(
            PredictionRecord(
                request_id=request_id,
                received_at=received + timedelta(seconds=r),
                model_name=champion.name,
                model_version=version or champion.version,
                inputs={"rows": x[block].tolist()},
                outputs=outputs,
                latency_ms=1.0,
                n_rows=rows,
                features=x[block].astype("<f4").tobytes(),
            )
        )
        for i in range(rows):
            n = r * rows + i
            if n < labelled:
                label = predicted[n] if n >= wrong else 1 - predicted[n]
                feedback.append(FeedbackRecord(request_id, i, label, received))
    log.log_feedback(feedback)
    assert log.flush(30)
    assert log.written == requests + len(feedback), "the request log did not write everything"
    log.close()
    return predicted


def read_events(name: str, event_names: list[str]) -> list[Event]:
    async def read() -> list[Event]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    resource=EventResourceFilter(id=[f"mlops.model.{name}"]),
                    event=EventNameFilter(name=event_names),
                ),
                limit=50,
            )
            return list(page.events)

    return asyncio.run(read())


def read_artifacts(keys: list[str]) -> dict[str, Any]:
    """The newest data of each Prefect artifact key."""

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
            )
            return {a.key: a.data for a in sorted(found, key=lambda a: a.created or 0)}

    return asyncio.run(read())


def wait_for_events(name: str, event_names: list[str], timeout_s: float = 60) -> list[Event]:
    """The events once all of ``event_names`` are persisted (events are written async)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = read_events(name, event_names)
        if {e.event for e in found} >= set(event_names) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_drifted_window_with_wrong_predictions_emits_both_events(
    sqlite_champion: Champion,
) -> None:
    champion = sqlite_champion
    log_traffic(
        champion, requests=30, rows=20, seed=8, amount_shift_std=5.0, labelled=100, wrong=50
    )
    # not in the window: another version, and yesterday's traffic
    log_traffic(champion, requests=5, rows=20, seed=6, version="999", amount_shift_std=-3.0)
    log_traffic(champion, requests=5, rows=20, seed=7, age=timedelta(hours=30))

    result = monitor(model_name=champion.name)

    assert result["model_version"] == champion.version
    assert result["n_rows"] == 600
    assert result["drift_judged"] is True
    assert result["drift_share"] == pytest.approx(1 / 3)
    assert result["drifted_features"] == ["amount"]
    assert result["per_feature"]["amount"]["drifted"] is True
    assert result["per_feature"]["amount"]["score"] > 1.0
    assert result["live_accuracy"] == pytest.approx(0.5)
    assert result["n_labelled"] == 100
    assert result["events"] == MONITOR_EVENTS

    found = wait_for_events(champion.name, MONITOR_EVENTS)
    by_name = {e.event: e for e in found}
    assert set(by_name) == set(MONITOR_EVENTS)
    drift = by_name[events.MODEL_DRIFT_DETECTED]
    assert drift.resource.id == f"mlops.model.{champion.name}"
    assert drift.payload["drift_share"] == pytest.approx(1 / 3)
    assert drift.payload["drift_share_threshold"] == 0.3
    assert drift.payload["drifted_features"] == ["amount"]
    assert drift.payload["n_rows"] == 600
    assert drift.payload["model_version"] == champion.version
    assert drift.payload["report_uri"] == result["report_uri"]
    assert drift.payload["window_end"] == result["window_end"]
    degraded = by_name[events.MODEL_PERFORMANCE_DEGRADED]
    assert degraded.payload["live_accuracy"] == pytest.approx(0.5)
    assert degraded.payload["min_live_accuracy"] == 0.8

    client = MlflowClient(tracking_uri=champion.settings.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == champion.settings.mlflow.experiment
    assert run.info.run_name.startswith(f"monitor-{champion.name}-")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlops.model"] == champion.name
    assert run.data.tags["mlops.model_version"] == champion.version
    assert run.data.metrics["drift_share"] == pytest.approx(1 / 3)
    assert run.data.metrics["live_accuracy"] == pytest.approx(0.5)
    assert run.data.metrics["n_rows"] == 600
    assert run.data.metrics["n_labelled"] == 100
    assert [a.path for a in client.list_artifacts(run.info.run_id, "monitoring")] == [
        "monitoring/report.html"
    ]
    assert result["report_uri"].endswith("/monitoring/report.html")
    html = Path(unquote(urlparse(result["report_uri"]).path)).read_text(encoding="utf-8")
    assert "<html" in html.lower() and "amount" in html

    keys = [artifact_key("monitor", champion.name, part) for part in ("report", "drift", "")]
    artifacts = read_artifacts(keys)
    # no tracking server: the link is the report's artifact URI
    assert artifacts[keys[0]].endswith(f"]({result['report_uri']})")
    assert '"feature": "amount"' in artifacts[keys[1]] and '"drifted": true' in artifacts[keys[1]]
    assert "Drifted features: amount" in artifacts[keys[2]]

    engine = history_engine(str(champion.settings.request_log.url))
    try:
        (row,) = recent_runs(engine, model_name=champion.name)
    finally:
        engine.dispose()
    assert row.model_version == champion.version
    assert row.n_rows == 600 and row.n_labelled == 100
    assert row.drift_share == pytest.approx(1 / 3)
    assert row.drifted_features == ["amount"]
    assert row.per_feature == result["per_feature"]
    assert row.live_accuracy == pytest.approx(0.5)
    assert row.report_uri == result["report_uri"]
    assert row.flow_run_id
    assert row.window_end.isoformat() == result["window_end"]


def test_undrifted_window_on_postgres_emits_nothing(postgres_champion: Champion) -> None:
    champion = postgres_champion
    assert str(champion.settings.request_log.url).startswith("postgresql")
    log_traffic(champion, requests=25, rows=40, seed=12, labelled=200)

    result = monitor(model_name=champion.name, window_hours=2)

    assert result["n_rows"] == 1000
    assert result["drift_share"] == 0.0
    assert result["drifted_features"] == []
    assert result["live_accuracy"] == 1.0 and result["n_labelled"] == 200
    assert result["events"] == []
    # a marker emitted after the flow: once it is stored, anything the flow emitted is too
    events.emit("mlops.test.marker", events.model_resource(champion.name), {})
    assert wait_for_events(champion.name, ["mlops.test.marker"])
    assert read_events(champion.name, MONITOR_EVENTS) == []

    engine = history_engine(str(champion.settings.request_log.url))
    try:
        assert engine.dialect.name == "postgresql"
        (row,) = recent_runs(engine, model_name=champion.name)
    finally:
        engine.dispose()
    assert row.drift_share == 0.0 and row.drifted_features == []
    assert row.live_accuracy == 1.0 and row.n_labelled == 200
    assert set(row.per_feature) == set(FEATURES)
    assert row.report_uri == result["report_uri"]
    assert row.window_end - row.window_start == timedelta(hours=2)


def test_too_few_rows_judge_no_drift_but_still_the_live_accuracy(
    sqlite_champion: Champion,
) -> None:
    champion = sqlite_champion
    log_traffic(champion, requests=5, rows=10, seed=9, amount_shift_std=5.0, labelled=10, wrong=1)

    result = monitor(model_name=champion.name, min_rows=51, min_live_accuracy=0.95)

    assert result["n_rows"] == 50
    assert result["drift_judged"] is False
    assert result["drift_share"] is None and result["drifted_features"] == []
    assert result["report_uri"] is None
    assert result["live_accuracy"] == pytest.approx(0.9) and result["n_labelled"] == 10
    assert result["events"] == [events.MODEL_PERFORMANCE_DEGRADED]
    assert "drift not judged: 50 rows in the window, fewer than 51" in result["reasons"]
    (event,) = wait_for_events(champion.name, [events.MODEL_PERFORMANCE_DEGRADED])
    assert event.payload["drift_share"] is None
    assert event.payload["min_live_accuracy"] == 0.95

    client = MlflowClient(tracking_uri=champion.settings.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert "drift_share" not in run.data.metrics
    assert client.list_artifacts(run.info.run_id, "monitoring") == []


def test_a_model_without_champion_fails_with_a_clear_message(mlops_home: Path) -> None:
    with pytest.raises(NoChampionError, match="model 'nobody' has no 'champion' version"):
        monitor(model_name="nobody")


def test_predictions_between_reads_a_window_oldest_first(mlops_home: Path) -> None:
    settings = Settings()
    log = RequestLog(settings.request_log)
    log.start()
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    records = [
        PredictionRecord(
            request_id=f"r{i}",
            received_at=t0 + timedelta(minutes=i),
            model_name="m" if i != 3 else "other",
            model_version="2" if i != 4 else "1",
            inputs={},
            outputs=[{"label": 0, "probability": 0.1}],
            latency_ms=1.0,
            n_rows=1,
            features=np.zeros(3, dtype="<f4").tobytes(),
        )
        for i in range(8)
    ]
    for record in reversed(records):
        log.log_prediction(record)
    assert log.flush(30)
    try:
        since, until = t0 + timedelta(minutes=1), t0 + timedelta(minutes=7)  # [1, 7)
        ids = [r.request_id for r in log.predictions_between("m", since, until)]
        assert ids == ["r1", "r2", "r4", "r5", "r6"]
        got = log.predictions_between("m", since, until, model_version="2")
        assert [r.request_id for r in got] == ["r1", "r2", "r5", "r6"]
        assert got[0] == records[1]
        newest = log.predictions_between("m", since, until, model_version="2", limit=2)
        assert [r.request_id for r in newest] == ["r5", "r6"]
        naive = log.predictions_between("m", since.replace(tzinfo=None), until.replace(tzinfo=None))
        assert [r.request_id for r in naive] == ids
    finally:
        log.close()
