"""The console's Retraining page under Streamlit's ``AppTest``, against the session's real
Prefect test API holding ``retrain/<model>`` registered from code as ``mlops deploy``
registers it (its cron schedule and its event trigger)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from streamlit.testing.v1 import AppTest

from deployments import retrain_deployment
from deployments.pools import ensure_pools
from mlops.events import MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED
from mlops.platform.orchestration import MANUAL_TAG
from mlops.settings import Settings
from ui.auth import login_state

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

PAGE = Path(__file__).resolve().parents[2] / "ui" / "pages" / "retraining.py"
TOKEN = "console-retraining-token"


@pytest.fixture
def model(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``retrain/<model>`` of a model of its own, registered; the page's env set."""
    from prefect.settings import PREFECT_API_URL

    name = f"probe_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", str(PREFECT_API_URL.value()))
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    monkeypatch.setenv("MLOPS_SERVING__MODEL_NAME", name)
    settings = Settings()
    with get_client(sync_client=True) as client:
        ensure_pools(client, settings)
    retrain_deployment(name, settings).apply()
    yield name
    with get_client(sync_client=True) as client:  # its runs and trigger go with it
        client.delete_deployment(client.read_deployment_by_name(f"retrain/{name}").id)


def page(secret: str = TOKEN) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    for key, value in login_state(secret, Settings()).items():
        at.session_state[key] = value
    return at.run()


def no_errors(at: AppTest) -> None:
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert not at.error, at.error[0].value if at.error else ""


def read_deployment(model: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"retrain/{model}")


def test_schedules_triggers_and_thresholds_are_shown(model: str) -> None:
    at = page()
    no_errors(at)
    assert at.selectbox(key="deployment").value == f"retrain/{model}"
    overview = at.dataframe[0].value.set_index("deployment")
    assert overview.loc[f"retrain/{model}", "schedules"] == "active"
    assert overview.loc[f"retrain/{model}", "model"] == model

    schedules = at.dataframe[1].value
    assert list(schedules["schedule"]) == ["cron 0 3 * * 1"]
    assert list(schedules["active"]) == [True]

    triggers = at.dataframe[2].value
    assert len(triggers) == 1
    trigger = triggers.iloc[0]
    assert trigger["on events"] == f"{MODEL_DRIFT_DETECTED}, {MODEL_PERFORMANCE_DEGRADED}"
    assert f"mlops.model.{model}" in trigger["of"]
    assert trigger["cooldown h"] == 6 and trigger["threshold"] == 1
    assert trigger["reason passed"] == "{{ event.event }}"

    thresholds = {m.label: m.value for m in at.metric}
    assert thresholds == {
        "drift share threshold": "30%",
        "minimum live accuracy": "80%",
        "rows to judge drift": "200",
    }


def test_pause_and_resume_change_the_schedule_state(model: str) -> None:
    at = page()
    at.button(key="pause").click().run()
    no_errors(at)
    assert read_deployment(model).paused is True
    assert f"retrain/{model} is paused now." in at.success[0].value
    assert "is paused" in at.warning[0].value
    assert at.dataframe[0].value.set_index("deployment").loc[f"retrain/{model}", "schedules"] == (
        "paused"
    )

    at.button(key="resume").click().run()
    no_errors(at)
    assert read_deployment(model).paused is False
    assert at.button(key="pause")  # the page offers to pause again


def test_retrain_now_starts_a_manual_run(model: str) -> None:
    at = page()
    at.number_input(key="epochs").set_value(2)
    at.form_submit_button[0].click().run()
    no_errors(at)
    deployment = read_deployment(model)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    manual = [r for r in runs if r.parameters.get("reason") == "manual"]
    assert len(manual) == 1
    assert manual[0].parameters == {
        "model_name": model,
        "reason": "manual",
        "folds": 3,
        "epochs": 2,
    }
    assert MANUAL_TAG in manual[0].tags
    assert f"Started flow run {manual[0].id}" in at.success[0].value

    recent = at.dataframe[-1].value
    row = recent.set_index("id").loc[str(manual[0].id)]
    assert row["reason"] == "manual" and row["state"] == "Scheduled" and row["by hand"]
    assert row["link"].endswith(f"/runs/flow-run/{manual[0].id}")


def test_a_viewer_cannot_change_anything(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_CONSOLE__PASSWORD", "look-only")
    at = page("look-only")
    no_errors(at)
    assert at.button(key="pause").disabled
    assert at.form_submit_button[0].disabled
    assert any("management token" in i.value for i in at.info)


def test_an_unreachable_api_says_what_to_do(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", "http://127.0.0.1:9/api")
    at = page("change-me")  # the development password: may look
    assert not at.exception
    assert at.error, at.main
    assert "Prefect API cannot be read" in at.error[0].value
    assert "MLOPS_PREFECT__API_URL" in at.error[0].value
