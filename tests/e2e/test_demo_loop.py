"""The whole loop on small data: flows under a real Prefect API, a real MLflow registry,
the SQLite online store, and the real app over HTTP (uvicorn in a child process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from mlops.cli.demo import DemoOptions, DemoSummary, run_demo
from mlops.cli.server import free_port, running_app
from mlops.features.offline import OfflineStore
from mlops.registry import CHALLENGER, CHAMPION, Tags
from mlops.settings import Settings
from mlops.specs import get_spec

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

OPTS = DemoOptions(
    entities=800,
    days=28,
    seed=3,
    end=datetime(2026, 3, 1, tzinfo=UTC),
    epochs=4,
    batch_size=128,
    entity_requests=20,
    inline_requests=10,
)


def app_env(home: Path) -> dict[str, str]:
    return {"MLOPS_HOME": str(home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def test_demo_loop_twice_registers_promotes_and_serves(mlops_home: Path) -> None:
    steps: list[str] = []
    settings = Settings()
    first = run_demo(settings, OPTS, step=steps.append, app_env=app_env(mlops_home))

    assert len(steps) == 5
    check_first_run(settings, first)

    second = run_demo(settings, OPTS, app_env=app_env(mlops_home))
    assert second.trained["version"] == "2"
    assert second.evaluated["challenger_version"] == "2"
    assert second.evaluated["champion_version_before"] == "1"
    assert second.evaluated["champion_metrics"] is not None
    # same data and seed: the same model, so no regression and a promotion
    assert second.evaluated["promoted"] is True
    assert second.served_version == "2"
    # a rerun replaced the offline partitions instead of adding to them
    assert second.materialized["rows"] == first.materialized["rows"]
    view = get_spec("fraud_detector", settings).views[0]
    assert len(OfflineStore(settings.offline_path).read(view)) == first.events


def check_first_run(settings: Settings, summary: DemoSummary) -> None:
    assert summary.events > 5_000
    assert summary.materialized["partitions"] == OPTS.days
    assert summary.materialized["entities_online"] > 0.9 * OPTS.entities
    trained = summary.trained
    assert trained["version"] == "1"
    assert trained["holdout_roc_auc"] > 0.75
    assert trained["parity_max_abs_diff"] <= 1e-4
    assert summary.evaluated["promoted"] is True
    assert summary.served_version == "1"
    assert summary.predictions == OPTS.entity_requests + OPTS.inline_requests + 10
    assert 0 < summary.entity_latency_ms["p50"] <= summary.entity_latency_ms["p99"]

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    champion = client.get_model_version_by_alias("fraud_detector", CHAMPION)
    assert str(champion.version) == "1"
    assert CHALLENGER not in champion.aliases
    tags = champion.tags
    view = get_spec("fraud_detector", settings).views[0]
    assert json.loads(tags[Tags.FEATURE_VIEWS]) == [view.ref]
    assert json.loads(tags[Tags.FEATURE_NAMES]) == view.feature_names
    assert len(tags[Tags.ONNX_SHA256]) == 64
    assert tags[Tags.TRAIN_FLOW_RUN_ID]
    assert "/" in tags[Tags.DATA_WINDOW]
    assert tags[Tags.GATE_DECISION] == "promoted"
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_roc_auc")
    assert [m.step for m in history] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss_curve.png", "plots/calibration.png"} <= artifacts


def test_app_errors_over_http(mlops_home: Path) -> None:
    """The served app's error contract, on a real trained champion."""
    settings = Settings()
    run_demo(settings, OPTS, app_env=app_env(mlops_home))
    port = free_port()
    with (
        running_app(
            host="127.0.0.1", port=port, env=app_env(mlops_home), log_path=mlops_home / "t.log"
        ) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        assert http.get("/health").status_code == 200
        unknown = http.post("/predict", json={"entities": ["no-such-card"]})
        assert unknown.status_code == 404
        assert "no-such-card" in unknown.text
        bad = http.post("/predict", json={"rows": [{"amount": 3.0}]})
        assert bad.status_code == 422
        assert "is_online" in bad.text
        assert http.post("/predict", json={}).status_code == 422
        ok = http.post("/predict", json={"entities": ["card_00001", "card_00002"]})
        assert ok.status_code == 200, ok.text
        assert ok.headers["X-Model-Version"] == "1"
        assert len(ok.json()["predictions"]) == 2
