"""The Overview page against real backends: MLflow in the home, the SQLite online store
and request log, the session's Prefect API; and against backends that are all down."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlops.monitoring.history import MonitoringRun, history_engine, record_run
from mlops.registry import configure_mlflow
from mlops.settings import Settings
from tests.integration._console import (
    TOKEN,
    console,
    platform_env,
    server_navigation,
    texts,
)
from tests.integration._registry import register_version

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _server() -> Iterator[None]:
    with server_navigation():
        yield


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("prefect_api")
def test_overview_shows_champions_monitoring_runs_and_healthy_backends(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    settings = platform_env(monkeypatch)
    model = f"overview-{uuid.uuid4().hex[:6]}"
    experiment_id = configure_mlflow(settings)
    version = register_version(
        tracking_uri=settings.tracking_uri, experiment_id=experiment_id, name=model
    )
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    run_id = client.get_model_version(model, version).run_id
    assert run_id
    client.log_metric(run_id, "holdout_roc_auc", 0.9137)

    engine = history_engine(settings.request_log.url or "")
    now = datetime.now(UTC)
    for hours_ago, drift, accuracy in ((3, 0.1, 0.93), (1, 0.5, 0.71)):
        record_run(
            engine,
            MonitoringRun(
                model_name=model,
                model_version=version,
                window_start=now - timedelta(hours=hours_ago + 24),
                window_end=now - timedelta(hours=hours_ago),
                n_rows=1234,
                drift_share=drift,
                drifted_features=["amount"] if drift > 0.3 else [],
                per_feature={},
                live_accuracy=accuracy,
                n_labelled=300,
            ),
        )
    engine.dispose()

    probe_name = f"console-probe-{uuid.uuid4().hex[:6]}"

    @flow(name=probe_name)
    def probe() -> int:
        return 1

    probe()

    at = console(secret=TOKEN).run()
    assert not at.exception, at.exception
    assert texts(at.title) == ["Overview"]
    markdown = texts(at.markdown)
    for backend in ("Prefect", "MLflow", "Online store", "Request log"):
        assert f"**{backend}** :green[● healthy]" in markdown, markdown
    assert not at.error, texts(at.error)

    champions = at.dataframe[0].value
    row = champions[champions["model"] == model].iloc[0]
    assert int(row["champion"]) == int(version)
    assert row["roc_auc"] == pytest.approx(0.9137)

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["drift share"] == "50%"
    assert metrics["live accuracy"] == "71.0%"
    warnings = " ".join(texts(at.warning))
    assert f"{model}: drift share 50% is at or over the threshold" in warnings
    assert f"{model}: live accuracy 71.0% is under the minimum" in warnings
    assert at.get("vega_lite_chart"), "the drift / accuracy chart"

    runs = at.dataframe[1].value
    mine = runs[runs["deployment"] == probe_name]
    assert len(mine) == 1 and "Completed" in mine.iloc[0]["state"]


def test_overview_names_every_unreachable_backend_and_what_to_do(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", f"http://127.0.0.1:{port}/api")
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv(
        "MLOPS_REQUEST_LOG__URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/requests"
    )
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    Settings()  # valid settings: only the servers are missing

    at = console(secret=TOKEN).run()
    assert not at.exception, at.exception
    assert texts(at.title) == ["Overview"]
    errors = texts(at.error)
    assert len(errors) == 4, errors
    prefect, mlflow, online, requests = errors
    assert prefect.startswith("Prefect: unreachable") and "MLOPS_PREFECT__API_URL" in prefect
    assert mlflow.startswith("MLflow: unreachable") and "MLOPS_MLFLOW__TRACKING_URI" in mlflow
    assert online.startswith("Online store: unreachable") and "MLOPS_ONLINE_STORE__URL" in online
    assert requests.startswith("Request log: unreachable") and "MLOPS_REQUEST_LOG__URL" in requests
    assert str(port) in online and str(port) in requests
    warnings = texts(at.warning)
    assert any("MLflow is unreachable" in w for w in warnings)
    assert any("request log is unreachable" in w for w in warnings)
    assert any("Prefect is unreachable" in w for w in warnings)
