"""The closed loop on the local stack, with no manual step once a champion is served.

``mlops up`` runs the whole platform (Prefect server, MLflow server, the runner serving
every deployment with its schedules and triggers, the app, the console) on the test's
Postgres and Redis. The test drives it only through the management API and HTTP:

1. materialize → train → evaluate deployments: version 1 is champion and the app serves it;
2. traffic whose features have drifted (amounts and distances ×3, everything online);
3. a run of the ``monitor/fraud_detector`` deployment finds the drift and emits
   ``mlops.model.drift-detected``;
4. the retrain deployment's event trigger starts ``retrain/fraud_detector`` by itself; it
   trains version 2, evaluates it walk-forward against the champion and promotes it;
5. the app notices the alias move and serves version 2.

All of it within ten minutes of starting the stack.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from mlops import events
from mlops.data.generate import generate_transactions, write_events
from mlops.features.offline import OfflineStore
from mlops.registry import CHAMPION, Tags, mlflow_client, version_by_alias
from mlops.serving.request_log import RequestLog
from mlops.settings import Settings
from mlops.specs import get_spec, transactions_path
from tests._stack import STARTUP_S, Up, launch, shutdown, wait_healthy
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.e2e

LOOP_BUDGET_S = 600.0
TOKEN = "closed-loop-token"
MODEL = "fraud_detector"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DRIFTED_ROWS = 400


@pytest.fixture
def stack(
    tmp_path: Path,
    postgres_admin: sa.Engine,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Up, Settings, float]]:
    """``mlops up`` on the test's Postgres (fresh databases) and Redis (its own db
    number's keys are the view's: the test flushes nothing else), and this process
    pointed at it the way the stack points its children."""
    started = time.monotonic()
    prefix = f"loop_{uuid.uuid4().hex[:8]}_"
    up = launch(
        tmp_path / "home",
        *("--postgres", PG_SERVER, "--database-prefix", prefix, "--redis", redis_url),
        env={"MLOPS_SERVING__API_TOKEN": TOKEN, "MLOPS_SERVING__RELOAD_POLL_S": "2"},
    )
    try:
        wait_healthy(up, time.monotonic() + STARTUP_S + 30)
        for key, value in up.env().items():
            monkeypatch.setenv(key, value)
        yield up, Settings(), started
    finally:
        shutdown(up)
        with postgres_admin.connect() as conn:
            for name in ("prefect", "mlflow", "mlops_requests"):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}{name}" WITH (FORCE)'))


def test_drift_retrains_promotes_and_serves_without_a_manual_step(
    stack: tuple[Up, Settings, float],
) -> None:
    up, settings, started = stack
    deadline = started + LOOP_BUDGET_S
    spec = get_spec(MODEL, settings)
    view = spec.views[0]
    now = datetime.now(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    events_frame = generate_transactions(n_entities=800, days=28, seed=3, end=today)
    settings.ensure_home()
    write_events(events_frame, Path(transactions_path(settings)))

    app = httpx.Client(
        base_url=up.url("app"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0
    )
    with app:
        # 1. a champion, through the deployments the runner serves
        run_to_completion(app, "materialize", view.name, {"mode": "full"}, deadline)
        trained = run_to_completion(app, "train", MODEL, {}, deadline)
        run_to_completion(app, "evaluate", MODEL, {}, deadline)
        assert trained["parameters"]["model_name"] == MODEL
        assert served_version(app, "1", deadline) == "1"

        # 2. drifted traffic, scored by version 1 and logged
        rows = drifted_rows(settings, view)
        sent_at = datetime.now(UTC) - timedelta(seconds=1)
        for chunk in range(0, len(rows), 50):
            answer = app.post("/predict", json={"rows": rows[chunk : chunk + 50]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["version"] == "1"
        wait_logged(settings, sent_at, len(rows), deadline)

        # 3. the monitor deployment sees the drift and emits the event
        monitored = run_to_completion(app, "monitor", MODEL, {"window_hours": 1.0}, deadline)
        assert monitored["parameters"]["window_hours"] == 1.0

        # 4. the trigger starts the retraining by itself
        retrain = wait_for_retrain_run(up, deadline)
        assert retrain["parameters"]["reason"] == events.MODEL_DRIFT_DETECTED
        payload = retrain["parameters"]["event_payload"]
        assert payload["drift_share"] >= payload["drift_share_threshold"]
        assert payload["model_version"] == "1"
        assert payload["n_rows"] >= DRIFTED_ROWS
        finished = wait_flow_run(app, retrain["id"], deadline)
        assert finished["state_type"] == "COMPLETED", finished

        # the new version is the champion, and says why it exists
        client = mlflow_client(settings)
        champion = version_by_alias(client, MODEL, CHAMPION)
        assert champion is not None and str(champion.version) == "2"
        tags = client.get_model_version(MODEL, "2").tags
        assert tags[Tags.RETRAIN_REASON] == events.MODEL_DRIFT_DETECTED
        assert tags[Tags.RETRAIN_FLOW_RUN_ID] == retrain["id"]
        assert tags[Tags.GATE_DECISION] == "promoted"
        assert (tags["promotion.by"], tags["promotion.previous"]) == ("evaluate flow", "1")
        assert tags["promotion.reason"] == tags[Tags.GATE_REASON]

        # 5. and the app serves it
        assert served_version(app, "2", deadline) == "2"
        answer = app.post("/predict", json={"rows": rows[:1]})
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "2"
    assert time.monotonic() - started < LOOP_BUDGET_S


def run_to_completion(
    app: httpx.Client, kind: str, name: str, parameters: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """Start a run of ``<kind>/<name>`` through the management API and wait for its end."""
    started = app.post(f"/flows/{kind}/{name}/runs", json={"parameters": parameters})
    assert started.status_code == 202, started.text
    finished = wait_flow_run(app, started.json()["id"], deadline)
    assert finished["state_type"] == "COMPLETED", f"{kind}/{name}: {finished}"
    return finished


def wait_flow_run(app: httpx.Client, flow_run_id: str, deadline: float) -> dict[str, Any]:
    while True:
        found = app.get(f"/flow-runs/{flow_run_id}")
        assert found.status_code == 200, found.text
        body: dict[str, Any] = found.json()
        if body["state_type"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id} not finished at the deadline: {body}")
        time.sleep(2)


def served_version(app: httpx.Client, version: str, deadline: float) -> str:
    """Wait until the app serves ``version`` of the model (it follows the registry)."""
    while True:
        found = app.get("/model")
        if found.status_code == 200 and str(found.json()["version"]) == version:
            return version
        if time.monotonic() > deadline:
            pytest.fail(f"the app still serves {found.status_code} {found.text[:300]}")
        time.sleep(1)


def drifted_rows(settings: Settings, view: Any) -> list[dict[str, float]]:
    """Latest feature rows of many cards, shifted: amounts and distances ×3, all online."""
    latest = OfflineStore(settings.offline_path).read(view).tail(DRIFTED_ROWS)
    frame = latest[view.feature_names].astype(float).copy()
    for column in frame.columns:
        if "amount" in column or "distance" in column:
            frame[column] = frame[column] * 3.0 + 50.0
    frame["is_online"] = 1.0
    assert len(frame) == DRIFTED_ROWS
    rows: list[dict[str, float]] = frame.to_dict(orient="records")
    return rows


def wait_logged(settings: Settings, since: datetime, rows: int, deadline: float) -> None:
    """The request log (Postgres) holds the traffic's rows: the monitor reads it."""
    log = RequestLog(settings.request_log)
    try:
        while True:
            found = log.predictions_between(MODEL, since, datetime.now(UTC) + timedelta(1))
            if sum(record.n_rows or 0 for record in found) >= rows:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(found)} requests reached the request log")
            time.sleep(1)
    finally:
        log.close()


def wait_for_retrain_run(up: Up, deadline: float) -> dict[str, Any]:
    """The flow run the trigger created for ``retrain/<model>`` (no one asked for it);
    its schedule's runs are there too (SCHEDULED for next Monday), not counted."""
    api = f"{up.url('prefect')}/api"
    deployment = httpx.get(f"{api}/deployments/name/retrain/{MODEL}").json()
    while True:
        found = httpx.post(
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment["id"]]}}},
        ).json()
        # the weekly schedule's runs wait for Monday: only the automation's run counts
        triggered = [r for r in found if (r.get("created_by") or {}).get("type") == "AUTOMATION"]
        if triggered:
            assert len(triggered) == 1, f"one burst, one retraining: {triggered}"
            run: dict[str, Any] = triggered[0]
            assert run["created_by"]["display_value"].startswith("retrain fraud_detector")
            return run
        if time.monotonic() > deadline:
            pytest.fail("no retrain run was created from the drift event")
        time.sleep(2)
