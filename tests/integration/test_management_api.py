"""The platform routes (``app/routes/platform.py``) against real services.

A real MLflow registry (SQLite + local artifacts) holds a tiny ONNX model in three
versions whose runs logged metrics; the session's real Prefect test API holds the
deployments. The flow-run test serves the real ``materialize`` flow in a Prefect runner
(a subprocess, as ``mlops deploy --serve`` does), starts a run through the API and
follows it until it completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from pydantic import SecretStr

from app.main import create_app
from mlops.data.generate import generate_transactions, write_events
from mlops.platform.models import CHAMPION_HISTORY, PROMOTION_BY, PROMOTION_REASON
from mlops.processes import terminate
from mlops.settings import (
    MlflowSettings,
    PrefectSettings,
    ServingSettings,
    Settings,
    SqliteOnlineStoreSettings,
)
from mlops.specs import transactions_path
from tests.integration._registry import new_registry, register_version

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

TOKEN = "platform-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]
VIEW = "card_transactions"


def prefect_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_api fixture sets PREFECT_API_URL"
    return str(url)


class Registry:
    """A registry with ``model`` v1 (champion), v2, v3 and an untagged ``bare`` v1."""

    def __init__(self, root: Path) -> None:
        self.uri, self.experiment_id = new_registry(root)
        self.model = f"m-{uuid.uuid4().hex[:8]}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.runs: dict[str, str] = {}
        for version_auc in (0.81, 0.93, 0.87):
            version = register_version(
                tracking_uri=self.uri,
                experiment_id=self.experiment_id,
                name=self.model,
                alias=None,
            )
            run_id = self.client.get_model_version(self.model, version).run_id
            assert run_id is not None
            self.client.log_metric(run_id, "val_roc_auc", version_auc)
            self.client.log_metric(run_id, "val_loss", 1 - version_auc)
            self.client.log_param(run_id, "epochs", str(int(version) * 2))
            self.runs[version] = run_id
        self.client.set_registered_model_alias(self.model, "champion", "1")
        self.client.set_registered_model_alias(self.model, "challenger", "2")
        self.bare = register_version(
            tracking_uri=self.uri,
            experiment_id=self.experiment_id,
            name=f"{self.model}-bare",
            alias=None,
            without=("onnx_sha256",),
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


def settings_for(home: Path, registry: Registry, **prefect: Any) -> Settings:
    return Settings(
        home=home,
        mlflow=MlflowSettings(tracking_uri=registry.uri, experiment="serving-tests"),
        prefect=PrefectSettings(**prefect),
        online_store=SqliteOnlineStoreSettings(path=home / "online.db"),
        serving=ServingSettings(
            model_name=registry.model, api_token=SecretStr(TOKEN), listen_events=False
        ),
    )


@pytest.fixture
def api(mlops_home: Path, registry: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(mlops_home, registry, api_url=prefect_url()))) as c:
        yield c


def platform_routes(client: TestClient) -> list[tuple[str, str]]:
    """``(method, path)`` of every operation tagged ``platform`` in the OpenAPI document."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if "platform" in operation.get("tags", [])
    ]


# --- auth ---------------------------------------------------------------------------------
def test_every_platform_route_needs_the_token(api: TestClient) -> None:
    routes = platform_routes(api)
    assert ("GET", "/models") in routes and ("POST", "/models/{name}/promote") in routes
    assert len(routes) == 14
    for method, path in routes:
        url = path.format(kind="train", name="x", flow="train", flow_run_id=uuid.uuid4())
        missing = api.request(method, url)
        assert missing.status_code == 401, (method, path, missing.text)
        wrong = api.request(method, url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, (method, path, wrong.text)


# --- models: list, versions, promote, rollback --------------------------------------------
def promoted_events(model: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(
        event=EventNameFilter(name=["mlops.model.promoted"]),
        resource=EventResourceFilter(id=[f"mlops.model.{model}"]),
    )
    with SyncPrefectClient(prefect_url()) as client:
        return [dict(e.payload) for e in client.read_events(filter=wanted, limit=50).events]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def test_models_and_versions_show_aliases_metrics_and_tags(
    api: TestClient, registry: Registry
) -> None:
    models = {m["name"]: m for m in api.get("/models", headers=AUTH).json()}
    assert models[registry.model]["aliases"] == {"champion": "1", "challenger": "2"}
    assert models[registry.model]["latest_version"] == "3"

    versions = api.get(f"/models/{registry.model}/versions", headers=AUTH)
    assert versions.status_code == 200
    body = versions.json()
    assert [v["version"] for v in body] == ["3", "2", "1"]
    by_version = {v["version"]: v for v in body}
    assert by_version["1"]["aliases"] == ["champion"]
    assert by_version["2"]["aliases"] == ["challenger"]
    assert by_version["2"]["metrics"]["val_roc_auc"] == pytest.approx(0.93)
    assert by_version["2"]["run_id"] == registry.runs["2"]
    assert by_version["1"]["feature_views"] == ["card_features@5e1f0c2a9b7d"]
    assert by_version["1"]["data_window"] == "2024-01-01/2024-03-31"
    assert (
        api.get(f"/models/{registry.model}/versions?limit=1", headers=AUTH).json()[0]["version"]
        == "3"
    )

    missing = api.get("/models/no-such-model/versions", headers=AUTH)
    assert missing.status_code == 404
    assert "no-such-model" in missing.json()["detail"]


def test_promote_then_roll_back_walks_the_champion_history(
    api: TestClient, registry: Registry
) -> None:
    name = registry.model
    client = registry.client

    first = api.post(
        f"/models/{name}/promote", json={"version": 2, "by": "alice", "reason": "A/B win"}
    )
    assert first.status_code == 401  # the token is needed for writes too
    first = api.post(
        f"/models/{name}/promote",
        headers=AUTH,
        json={"version": 2, "by": "alice", "reason": "A/B win"},
    )
    assert first.status_code == 200, first.text
    assert first.json()["previous"] == "1" and first.json()["changed"] is True
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert "challenger" not in client.get_registered_model(name).aliases  # it was v2's
    tags = client.get_model_version(name, "2").tags
    assert tags[PROMOTION_BY] == "alice" and tags[PROMOTION_REASON] == "A/B win"

    second = api.post(
        f"/models/{name}/promote", headers=AUTH, json={"version": "3", "reason": "newer"}
    ).json()
    assert second["previous"] == "2" and second["history"] == ["1", "2"]
    assert client.get_registered_model(name).tags[CHAMPION_HISTORY] == '["1", "2"]'
    again = api.post(
        f"/models/{name}/promote", headers=AUTH, json={"version": 3, "reason": "again"}
    ).json()
    assert again["changed"] is False and again["history"] == ["1", "2"]

    back = api.post(f"/models/{name}/rollback", headers=AUTH, json={"reason": "v3 regressed"})
    assert back.status_code == 200, back.text
    assert back.json()["version"] == "2" and back.json()["previous"] == "3"
    assert back.json()["kind"] == "rollback"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert client.get_model_version(name, "2").tags["promotion.kind"] == "rollback"
    further = api.post(f"/models/{name}/rollback", headers=AUTH, json={"reason": "further"})
    assert further.json()["version"] == "1" and further.json()["history"] == []
    empty = api.post(f"/models/{name}/rollback", headers=AUTH, json={"reason": "more"})
    assert empty.status_code == 409
    assert "no earlier champion" in empty.json()["detail"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # Each move was announced to the Prefect API, which the serving app follows.
    payloads = wait_for(
        lambda: (found := promoted_events(name)) and len(found) >= 4 and found,
        30,
        "four mlops.model.promoted events",
    )
    assert {(p["kind"], p["version"], p["previous"]) for p in payloads} == {
        ("promote", "2", "1"),
        ("promote", "3", "2"),
        ("rollback", "2", "3"),
        ("rollback", "1", "2"),
    }


def test_promote_refuses_unknown_and_unservable_versions(
    api: TestClient, registry: Registry
) -> None:
    unknown = api.post(
        f"/models/{registry.model}/promote", headers=AUTH, json={"version": 99, "reason": "x"}
    )
    assert unknown.status_code == 404
    assert f"{registry.model} v99" in unknown.json()["detail"]
    no_model = api.post("/models/nope/promote", headers=AUTH, json={"version": 1, "reason": "x"})
    assert no_model.status_code == 404 and "'nope'" in no_model.json()["detail"]
    bad = api.post(
        f"/models/{registry.model}/promote", headers=AUTH, json={"version": 0, "reason": "x"}
    )
    assert bad.status_code == 422
    no_reason = api.post(f"/models/{registry.model}/promote", headers=AUTH, json={"version": 1})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    bare = api.post(
        f"/models/{registry.model}-bare/promote", headers=AUTH, json={"version": 1, "reason": "x"}
    )
    assert bare.status_code == 409 and "onnx_sha256" in bare.json()["detail"]


# --- MLflow runs ----------------------------------------------------------------------------
def test_runs_can_be_searched_compared_and_ranked(api: TestClient, registry: Registry) -> None:
    base = "/experiments/serving-tests"
    ranked = api.get(
        f"{base}/runs",
        headers=AUTH,
        params={"filter": "metrics.val_roc_auc > 0.85", "order_by": "metrics.val_roc_auc DESC"},
    )
    assert ranked.status_code == 200, ranked.text
    assert [r["run_id"] for r in ranked.json()] == [registry.runs["2"], registry.runs["3"]]
    assert ranked.json()[0]["params"]["epochs"] == "4"
    limited = api.get(f"{base}/runs", headers=AUTH, params={"max_results": 1}).json()
    assert len(limited) == 1

    bad = api.get(f"{base}/runs", headers=AUTH, params={"filter": "metrics.val_roc_auc >>> 1"})
    assert bad.status_code == 422 and "run search" in bad.json()["detail"]
    missing = api.get("/experiments/nope/runs", headers=AUTH)
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]

    best = api.get(f"{base}/best", headers=AUTH, params={"metric": "val_roc_auc"}).json()
    assert best["run_id"] == registry.runs["2"]
    lowest = api.get(
        f"{base}/best", headers=AUTH, params={"metric": "val_roc_auc", "mode": "min"}
    ).json()
    assert lowest["run_id"] == registry.runs["1"]
    nothing = api.get(f"{base}/best", headers=AUTH, params={"metric": "never_logged"})
    assert nothing.status_code == 404 and "never_logged" in nothing.json()["detail"]
    wrong_mode = api.get(f"{base}/best", headers=AUTH, params={"metric": "x", "mode": "avg"})
    assert wrong_mode.status_code == 422

    ids = f"{registry.runs['1']},{registry.runs['3']}"
    compared = api.get("/runs/compare", headers=AUTH, params={"ids": ids, "metrics": "val_roc_auc"})
    assert compared.status_code == 200, compared.text
    body = compared.json()
    assert body["metrics"] == ["val_roc_auc"]
    assert body["best"] == {"val_roc_auc": registry.runs["3"]}
    assert all(set(r["metrics"]) == {"val_roc_auc"} for r in body["runs"])
    assert body["differing_params"]["epochs"] == {registry.runs["1"]: "2", registry.runs["3"]: "6"}
    unknown = api.get("/runs/compare", headers=AUTH, params={"ids": [registry.runs["1"], "f" * 32]})
    assert unknown.status_code == 404 and "f" * 32 in unknown.json()["detail"]


# --- Prefect: unreachable or not configured ------------------------------------------------
@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9/api"])
def test_prefect_routes_answer_503_naming_the_api(
    mlops_home: Path, registry: Registry, url: str | None
) -> None:
    app = create_app(settings_for(mlops_home, registry, api_url=url))
    with TestClient(app) as client:
        for method, path in [
            ("POST", "/flows/train/x/runs"),
            ("GET", f"/flow-runs/{uuid.uuid4()}"),
            ("POST", "/deployments/train/x/pause"),
        ]:
            answer = client.request(method, path, headers=AUTH)
            assert answer.status_code == 503, (path, answer.text)
            assert (url or "MLOPS_PREFECT__API_URL") in answer.json()["detail"]


# --- a real deployment, served by a runner, run through the API ----------------------------
@pytest.fixture
def served_materialize(mlops_home: Path) -> Iterator[Settings]:
    """Events in the home, and ``materialize/card_transactions`` served by a runner process."""
    settings = Settings()
    settings.ensure_home()
    events = generate_transactions(
        n_entities=60, days=5, seed=3, end=datetime(2026, 2, 1, tzinfo=UTC)
    )
    write_events(events, Path(transactions_path(settings)))
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_url(),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "MLOPS_FEATURES__DEFINITIONS": str(mlops_home / "features.yaml"),
    }
    # Loaded from its entrypoint, as a worker does (not pickled from this process).
    script = (
        "from prefect import flow\n"
        f"materialize = flow.from_source({str(REPO)!r}, 'flows/materialize.py:materialize')\n"
        f"materialize.serve(name={VIEW!r}, parameters={{'view_name': {VIEW!r}}}, "
        "cron='0 3 * * *', print_starting_message=False)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
    try:
        yield settings
    finally:
        terminate(runner, timeout_s=30)


def test_a_flow_run_started_through_the_api_completes(
    served_materialize: Settings, registry: Registry
) -> None:
    settings = served_materialize
    app = create_app(settings_for(settings.home, registry, api_url=prefect_url()))
    deployment = f"/deployments/materialize/{VIEW}"
    with TestClient(app) as api:
        wait_for(
            lambda: api.get(deployment, headers=AUTH).status_code == 200,
            90,
            "the runner to register materialize/card_transactions",
        )
        unknown = api.post("/flows/materialize/no_such_view/runs", headers=AUTH)
        assert unknown.status_code == 404
        assert "materialize/no_such_view" in unknown.json()["detail"]
        bad_kind = api.post("/flows/explode/x/runs", headers=AUTH)
        assert bad_kind.status_code == 422
        bad_param = api.post(
            f"/flows/materialize/{VIEW}/runs", headers=AUTH, json={"parameters": {"epochs": 3}}
        )
        assert bad_param.status_code == 422 and "'epochs'" in bad_param.json()["detail"]
        assert api.get("/flow-runs/not-a-uuid", headers=AUTH).status_code == 422
        lost = api.get(f"/flow-runs/{uuid.uuid4()}", headers=AUTH)
        assert lost.status_code == 404 and "flow run" in lost.json()["detail"]

        paused = api.post(f"{deployment}/pause", headers=AUTH)
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
        # This runner's cron, or prefect.yaml's when the session's API has that deployment
        # from an earlier test: either way a cron schedule is shown.
        schedules = [s["schedule"] for s in paused.json()["schedules"]]
        assert schedules and all(s.startswith("cron ") for s in schedules), schedules
        assert api.get(deployment, headers=AUTH).json()["paused"] is True

        started = api.post(
            f"/flows/materialize/{VIEW}/runs",
            headers=AUTH,
            json={"parameters": {"mode": "full"}},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        assert started.json()["deployment"] == f"materialize/{VIEW}"

        def finished() -> dict[str, Any] | None:
            status = api.get(f"/flow-runs/{run_id}", headers=AUTH).json()
            final = status["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            return status if final else None

        status = wait_for(finished, 240, f"flow run {run_id} to finish")
        assert status["state_type"] == "COMPLETED", status
        assert status["deployment"] == f"materialize/{VIEW}"
        assert status["parameters"]["mode"] == "full"
        assert status["progress"] == 100.0
        assert status["progress_key"] == "materialize-card-transactions-progress"
        assert status["start_time"] and status["end_time"] and status["run_seconds"] > 0

        resumed = api.post(f"{deployment}/resume", headers=AUTH).json()
        assert resumed["paused"] is False

        stats = api.get("/features/stats", headers=AUTH)
        assert stats.status_code == 200, stats.text
        view = {v["name"]: v for v in stats.json()}[VIEW]
        assert view["last_materialization"]["flow_run_id"] == run_id
        assert view["offline_partitions"] == view["last_materialization"]["partitions"] > 0
        assert view["online_version"] == view["version"]
        assert view["freshness"] in ("fresh", "stale")
        assert view["versions"][0]["current"] is True


def test_blank_or_padded_names_are_422_not_a_registry_error(api: TestClient) -> None:
    """MLflow strips names: " " would reach it as no name at all (a 500 before)."""
    for path in ("/models/%20/versions", "/models/%20fraud/versions", "/models/fraud%20/versions"):
        answer = api.get(path, headers=AUTH)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["path", "name"]
