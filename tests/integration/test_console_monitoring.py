"""The console's Monitoring page under Streamlit's ``AppTest``, against a real SQLite
request log (written by :class:`RequestLog`'s writer, as the app writes it), the
monitoring history table (written by :func:`record_run`, as the monitor flow writes it)
and a real MLflow store holding monitor runs with their HTML reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from mlops.monitoring.history import MonitoringRun, history_engine, record_run
from mlops.serving.request_log import FeedbackRecord, PredictionRecord, RequestLog
from mlops.settings import Settings
from ui.auth import login_state

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "ui" / "pages" / "monitoring.py"
MODEL = "fraud_detector"
FEATURES = ("amount", "distance_km")


def chart_data(chart: Any) -> pd.DataFrame:
    """The rows an Altair chart of the page plots (its Vega-Lite datasets)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
    return pd.concat(frames, ignore_index=True)


def page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    for key, value in login_state("change-me", Settings()).items():
        at.session_state[key] = value
    return at.run()


def no_errors(at: AppTest) -> None:
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert not at.error, at.error[0].value if at.error else ""


def log_requests(settings: Settings, now: datetime) -> None:
    """Two hours of traffic: 2 hours ago 4 requests (latency 10 ms, 2 rows each), 1 hour
    ago 2 requests (latency 30 ms, 1 row). Labelled: every row of the first hour, the
    fourth request's two wrong, and the first row of the second hour, right: 7 of 9."""
    log = RequestLog(settings.request_log)
    log.start()
    feedback = []
    hour = now.replace(minute=5, second=0, microsecond=0)  # every request well inside its hour
    plan = [(hour - timedelta(hours=2), 4, 2, 10.0), (hour - timedelta(hours=1), 2, 1, 30.0)]
    n = 0
    for at, requests, rows, latency in plan:
        for r in range(requests):
            request_id = uuid.uuid4().hex
            outputs: list[dict[str, Any]] = [
                {"label": i % 2, "probabilities": [0.5, 0.5]} for i in range(rows)
            ]
            log.log_prediction(
                PredictionRecord(
                    request_id=request_id,
                    received_at=at + timedelta(seconds=r),
                    model_name=MODEL,
                    model_version="3",
                    inputs={"rows": [[1.0, 2.0]] * rows},
                    outputs=outputs,
                    latency_ms=latency,
                    n_rows=rows,
                )
            )
            if n < 5:
                for i in range(rows):
                    label = outputs[i]["label"] if n != 3 else 1 - outputs[i]["label"]
                    feedback.append(FeedbackRecord(request_id, i, label, at))
            n += 1
    log.log_feedback(feedback)
    assert log.flush(30)
    log.close()


def record_history(settings: Settings, now: datetime) -> None:
    engine = history_engine(settings.request_log.url or "")
    for hours, share, drifted in ((3, 0.0, []), (2, 0.5, ["amount"]), (1, None, [])):
        per_feature = (
            {}
            if share is None
            else {
                f: {
                    "method": "wasserstein",
                    "score": 0.3 if f in drifted else 0.05,
                    "threshold": 0.1,
                    "drifted": f in drifted,
                }
                for f in FEATURES
            }
        )
        record_run(
            engine,
            MonitoringRun(
                model_name=MODEL,
                model_version="3",
                window_start=now - timedelta(hours=hours + 24),
                window_end=now - timedelta(hours=hours),
                n_rows=500 if share is not None else 20,
                drift_share=share,
                drifted_features=drifted,
                per_feature=per_feature,
                live_accuracy=0.8,
                n_labelled=5,
            ),
        )
    # Another model's history is not shown.
    record_run(
        engine,
        MonitoringRun(
            model_name="other",
            model_version="1",
            window_start=now - timedelta(hours=25),
            window_end=now - timedelta(hours=1),
            n_rows=500,
            drift_share=0.9,
            drifted_features=list(FEATURES),
            per_feature={},
            live_accuracy=None,
            n_labelled=0,
        ),
    )
    engine.dispose()


def log_reports(settings: Settings, tmp: Path) -> str:
    """Monitor runs: an older one with report "old", a newer with "newest", and the newest
    of all without a report (a window too small). Returns the run id with "newest"."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = client.create_experiment(
        settings.mlflow.experiment, artifact_location=(tmp / "artifacts").as_uri()
    )
    chosen = ""
    for text in ("old", "newest", None):
        run = client.create_run(
            experiment_id,
            run_name="monitor",
            tags={"mlops.flow": "monitor", "mlops.model": MODEL, "mlops.model_version": "3"},
        )
        if text is not None:
            html = tmp / "report.html"
            html.write_text(f"<html><body><h1>report {text}</h1></body></html>")
            client.log_artifact(run.info.run_id, str(html), artifact_path="monitoring")
            chosen = run.info.run_id
        client.set_terminated(run.info.run_id, "FINISHED")
    return chosen


@pytest.fixture
def monitored(mlops_home: Path, tmp_path: Path) -> Iterator[str]:
    settings = Settings()
    settings.ensure_home()
    now = datetime.now(UTC)
    log_requests(settings, now)
    record_history(settings, now)
    yield log_reports(settings, tmp_path)


def test_drift_report_accuracy_and_traffic(monitored: str) -> None:
    at = page()
    no_errors(at)
    assert at.selectbox(key="monitor_model").value == MODEL
    assert at.selectbox(key="monitor_model").options == ["fraud_detector", "other"]
    metrics = {m.label: m for m in at.metric}

    # Drift: the newest window was too small to judge.
    assert metrics["drift share (latest window)"].value == "not judged"
    assert metrics["rows in the window"].value == "20"
    charts = at.get("vega_lite_chart")
    shares = chart_data(charts[0])
    assert sorted(shares["drift share"].dropna()) == [0.0, 0.5]
    assert 0.3 in set(shares["threshold"].dropna())  # the drift-detected threshold
    per_feature = chart_data(charts[1])
    assert set(per_feature["feature"]) == set(FEATURES)
    drifted = per_feature[per_feature["drifted"]]
    assert list(drifted["feature"]) == ["amount"] and list(drifted["score"]) == [0.3]
    latest_features = at.dataframe[0].value
    assert list(latest_features["feature"]) == ["amount", "distance_km"]  # by score

    # The newest report that exists, embedded.
    [frame] = at.get("iframe")
    assert "report newest" in frame.proto.srcdoc
    assert any(monitored in c.value for c in at.caption)

    # Live accuracy from feedback: 7 of 9 labelled rows right, below the 80% threshold.
    assert metrics["live accuracy"].value == "77.8%"
    assert metrics["labelled rows"].value == "9"
    assert any("below 80%" in w.value for w in at.warning)
    accuracy = chart_data(charts[2])
    assert sorted(accuracy["labelled"].dropna()) == [1, 8]
    assert sorted(accuracy["accuracy"].dropna()) == [0.75, 1.0]

    # Traffic: 6 requests, 10 rows; p95 latency of the slower hour.
    assert metrics["requests"].value == "6"
    assert metrics["rows scored"].value == "10"
    assert metrics["worst p95 latency"].value == "30.0 ms"
    volume = chart_data(charts[3])
    assert sorted(volume["requests"]) == [2, 4]
    latency = chart_data(charts[4])
    assert set(latency["percentile"]) == {"p50 ms", "p95 ms", "p99 ms"}

    at.selectbox(key="monitor_model").set_value("other").run()
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["drift share (latest window)"] == "90%"
    assert "at or above the threshold" in at.warning[0].value
    assert any("No request to other" in i.value for i in at.info)


def test_nothing_logged_yet_says_what_to_do(mlops_home: Path) -> None:
    at = page()
    no_errors(at)
    infos = " ".join(i.value for i in at.info)
    assert "monitor/fraud_detector" in infos
    assert "POST /feedback" in infos
    assert "No request to fraud_detector" in infos


def test_an_unreachable_request_log_is_a_message(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_REQUEST_LOG__URL", "postgresql+psycopg://nobody@127.0.0.1:9/x")
    at = page()
    assert not at.exception
    assert "request log cannot be read" in at.error[0].value
    assert "MLOPS_REQUEST_LOG__URL" in at.error[0].value
