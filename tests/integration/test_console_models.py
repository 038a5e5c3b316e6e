"""The console's Models page under Streamlit's ``AppTest``, against a real MLflow registry.

A SQLite registry with local artifacts holds the tiny ONNX model in three versions whose
runs logged per-epoch curves; the session's real Prefect test API receives the
``mlops.model.promoted`` events. The page file runs directly (no console gate), logged
in through the session state as the login form would.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from mlops.platform.models import CHAMPION_HISTORY
from mlops.settings import Settings
from tests.integration._registry import model_bytes, new_registry, register_version
from ui.auth import login_state
from ui.data import ArtifactMismatchError, onnx_bytes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

PAGE = Path(__file__).resolve().parents[2] / "ui" / "pages" / "models.py"
TOKEN = "console-models-token"


class Registry:
    """``model`` v1 (champion), v2 (challenger), v3, each run with curves over 3 epochs."""

    def __init__(self, root: Path) -> None:
        self.uri, self.experiment_id = new_registry(root)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.model = self.new_model(3)

    def new_model(self, n: int) -> str:
        name = f"m-{uuid.uuid4().hex[:8]}"
        for auc in (0.81, 0.93, 0.87)[:n]:
            version = register_version(
                tracking_uri=self.uri, experiment_id=self.experiment_id, name=name, alias=None
            )
            run_id = self.client.get_model_version(name, version).run_id
            assert run_id is not None
            for epoch in (1, 2, 3):
                self.client.log_metric(run_id, "val_roc_auc", auc - 0.1 / epoch, step=epoch)
                self.client.log_metric(run_id, "train_loss", 1.0 / epoch, step=epoch)
            self.client.log_metric(run_id, "holdout_roc_auc", auc)
        self.client.set_registered_model_alias(name, "champion", "1")
        if n > 1:
            self.client.set_registered_model_alias(name, "challenger", "2")
        return name


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def env(mlops_home: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", registry.uri)
    monkeypatch.setenv("MLOPS_MLFLOW__EXPERIMENT", "serving-tests")
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", str(PREFECT_API_URL.value()))
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    monkeypatch.setenv("MLOPS_SERVING__MODEL_NAME", registry.model)
    yield


def page(secret: str = TOKEN) -> AppTest:
    """The page, logged in with ``secret`` (the management token: may change state)."""
    at = AppTest.from_file(str(PAGE), default_timeout=90)
    for key, value in login_state(secret, Settings()).items():
        at.session_state[key] = value
    return at.run()


def chart_data(chart: Any) -> pd.DataFrame:
    """The rows an Altair chart of the page plots (its Vega-Lite datasets)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
    return pd.concat(frames, ignore_index=True)


def no_errors(at: AppTest) -> None:
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert not at.error, at.error[0].value if at.error else ""


def champion(registry: Registry, name: str) -> str:
    return str(registry.client.get_model_version_by_alias(name, "champion").version)


def test_versions_show_metrics_aliases_lineage_and_curves(env: None, registry: Registry) -> None:
    at = page()
    no_errors(at)
    assert at.selectbox(key="model").value == registry.model
    table = at.dataframe[0].value
    assert list(table["version"]) == [3, 2, 1]
    assert dict(zip(table["version"], table["aliases"], strict=True)) == {
        3: "",
        2: "challenger",
        1: "champion",
    }
    assert table.loc[table["version"] == 2, "holdout_roc_auc"].item() == pytest.approx(0.93)
    assert table.loc[table["version"] == 1, "data window"].item() == "2024-01-01/2024-03-31"
    assert {m.label: m.value for m in at.metric}["champion (served)"] == "v1"

    lineage = at.dataframe[1].value  # the lineage of the newest version
    facts = dict(zip(lineage["what"], lineage["value"], strict=True))
    assert facts["feature views"] == "card_features@5e1f0c2a9b7d"
    assert facts["data window"] == "2024-01-01/2024-03-31"
    assert facts["MLflow run"] == registry.client.get_model_version(registry.model, "3").run_id
    assert facts["git commit"] == "0" * 40

    # Compare: the champion (v1) against the newest (v3), metrics and curves.
    assert str(at.selectbox(key="compare_a").value).startswith("v1")
    assert str(at.selectbox(key="compare_b").value).startswith("v3")
    compared = at.dataframe[2].value.set_index("metric")
    assert compared.loc["holdout_roc_auc", "change"] == pytest.approx(0.87 - 0.81)
    assert at.selectbox(key="compare_curve").options == ["train_loss", "val_roc_auc"]
    assert at.selectbox(key="compare_curve").value == "val_roc_auc"
    [chart] = at.get("vega_lite_chart")
    plotted = chart_data(chart)
    assert set(plotted["metric"]) == {"val_roc_auc"}
    assert sorted(plotted["run"].unique()) == ["v1", "v3"]
    v3 = plotted[plotted["run"] == "v3"].sort_values("step")
    assert list(v3["step"]) == [1, 2, 3]
    assert list(v3["value"]) == pytest.approx([0.77, 0.82, 0.8366667], abs=1e-4)


def test_promote_moves_the_alias_only_after_confirmation_then_rollback(
    env: None, registry: Registry
) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_URL

    name = registry.new_model(2)
    at = page()
    at.selectbox(key="model").set_value(name).run()
    no_errors(at)
    assert str(at.selectbox(key="promote_version").value).startswith("v2")

    at.button(key="promote_button").click().run()
    assert "Tick the confirmation" in at.warning[0].value
    assert champion(registry, name) == "1", "promoted without confirmation"

    at.text_input(key="reason").set_value("better holdout AUC")
    at.checkbox(key="promote_confirm").check()
    at.button(key="promote_button").click().run()
    no_errors(at)
    assert champion(registry, name) == "2"
    assert "v2 is now the champion" in at.success[0].value
    tags = registry.client.get_model_version(name, "2").tags
    assert tags["promotion.by"] == "console"
    assert tags["promotion.reason"] == "better holdout AUC"
    assert registry.client.get_registered_model(name).tags[CHAMPION_HISTORY] == '["1"]'
    assert at.checkbox(key="promote_confirm").value is False  # reset for the next one

    # Roll back: also only after confirmation.
    at.button(key="rollback_button").click().run()
    assert champion(registry, name) == "2"
    at.checkbox(key="rollback_confirm").check()
    at.button(key="rollback_button").click().run()
    no_errors(at)
    assert champion(registry, name) == "1"
    assert "rollback: v1" in at.success[0].value
    assert any("nothing to roll back to" in c.value for c in at.caption)

    wanted = EventFilter(
        event=EventNameFilter(name=["mlops.model.promoted"]),
        resource=EventResourceFilter(id=[f"mlops.model.{name}"]),
    )
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 30  # the API stores events asynchronously
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        with SyncPrefectClient(str(PREFECT_API_URL.value())) as client:
            events = client.read_events(filter=wanted, limit=10).events
        seen = {(e.payload["kind"], e.payload["version"]) for e in events}
    assert seen == {("promote", "2"), ("rollback", "1")}, "the app follows these events"


def test_a_viewer_cannot_promote(
    env: None, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CONSOLE__PASSWORD", "look-only")
    at = page("look-only")
    no_errors(at)
    assert at.button(key="promote_button").disabled
    assert any("management token" in i.value for i in at.info)
    at.checkbox(key="promote_confirm").check().run()
    assert at.button(key="promote_button").disabled  # confirming does not unlock it
    assert champion(registry, registry.model) == "1"


def test_download_offers_the_checked_onnx_bytes(env: None, registry: Registry) -> None:
    at = page()
    at.selectbox(key="download_version").set_value("v2 (challenger)").run()
    assert not at.get("download_button")
    at.button(key="fetch_onnx").click().run()
    no_errors(at)
    [button] = at.download_button
    assert button.label == f"Download {registry.model}-v2.onnx"
    expected = model_bytes(tracking_uri=registry.uri, name=registry.model, version="2")
    assert any(f"{len(expected):,} bytes" in c.value for c in at.caption)

    data = onnx_bytes(registry.client, name=registry.model, version="2")
    assert data == expected
    tag = registry.client.get_model_version(registry.model, "2").tags["onnx_sha256"]
    assert hashlib.sha256(data).hexdigest() == tag


def test_a_tampered_onnx_file_is_not_offered(env: None, registry: Registry) -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    register_version(
        tracking_uri=registry.uri,
        experiment_id=registry.experiment_id,
        name=name,
        sha256="0" * 64,
    )
    with pytest.raises(ArtifactMismatchError, match="sha256"):
        onnx_bytes(registry.client, name=name, version="1")
    at = page()
    at.selectbox(key="model").set_value(name).run()
    at.button(key="fetch_onnx").click().run()
    assert "not offered" in at.error[0].value and "onnx_sha256" in at.error[0].value
    assert not at.get("download_button")


def test_an_unreachable_registry_is_a_message_not_a_traceback(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    at = page()
    assert not at.exception
    assert "cannot be read" in at.error[0].value
    assert "MLOPS_MLFLOW__TRACKING_URI" in at.error[0].value
