"""The console's Experiments page under Streamlit's ``AppTest``, against a real MLflow
tracking store (SQLite): three finished training runs with per-epoch curves and one
monitor run, made with the MLflow client as the flows make them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from mlops.settings import Settings
from ui.auth import login_state

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "ui" / "pages" / "experiments.py"
EXPERIMENT = "console-experiments"


class Runs:
    """``slow`` (val_roc_auc ends 0.90), ``fast`` (0.95), ``tiny`` (0.80): each over 3
    epochs, newest last; and a monitor run (no curves)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = client.create_experiment(
            EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
        )
        self.ids: dict[str, str] = {}
        for name, final, epochs in (("slow", 0.90, 8), ("fast", 0.95, 4), ("tiny", 0.80, 2)):
            run = client.create_run(self.experiment_id, run_name=name)
            run_id = run.info.run_id
            for step in (1, 2, 3):
                client.log_metric(run_id, "val_roc_auc", final - 0.05 * (3 - step), step=step)
                client.log_metric(run_id, "train_loss", 1.0 - final + 0.1 * (3 - step), step=step)
            client.log_param(run_id, "epochs", str(epochs))
            client.log_param(run_id, "batch_size", "1024")
            client.set_terminated(run_id, "FINISHED")
            self.ids[name] = run_id
            time.sleep(0.02)  # distinct start times: the table is newest first
        monitor = client.create_run(
            self.experiment_id, run_name="monitor-m-1", tags={"mlops.flow": "monitor"}
        )
        client.log_metric(monitor.info.run_id, "drift_share", 0.4)
        client.set_terminated(monitor.info.run_id, "FINISHED")
        self.ids["monitor"] = monitor.info.run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("tracking"))


@pytest.fixture
def env(mlops_home: Path, runs: Runs, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", runs.uri)
    monkeypatch.setenv("MLOPS_MLFLOW__EXPERIMENT", EXPERIMENT)
    yield


def page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    for key, value in login_state("change-me", Settings()).items():
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


def test_runs_table_overlay_and_best_run(env: None, runs: Runs) -> None:
    at = page()
    no_errors(at)
    assert at.selectbox(key="experiment").value == EXPERIMENT
    table = at.dataframe[0].value
    assert list(table["run"]) == ["tiny", "fast", "slow"]  # newest first, no monitor run
    assert table.set_index("run").loc["fast", "val_roc_auc"] == pytest.approx(0.95)
    assert table.set_index("run").loc["slow", "param epochs"] == "8"
    assert list(table["run id"]) == [runs.ids[n] for n in ("tiny", "fast", "slow")]

    # Two runs overlaid by default; a third added.
    assert len(at.multiselect(key="overlay_runs").value) == 2
    assert at.selectbox(key="overlay_metric").value == "val_roc_auc"
    at.multiselect(key="overlay_runs").select(f"slow ({runs.ids['slow'][:8]})").run()
    no_errors(at)
    [chart] = at.get("vega_lite_chart")
    plotted = chart_data(chart)
    assert set(plotted["metric"]) == {"val_roc_auc"}
    assert sorted(plotted["run"].unique()) == sorted(
        f"{name} ({runs.ids[name][:8]})" for name in ("slow", "fast", "tiny")
    )
    assert len(plotted) == 9  # 3 epochs of 3 runs
    side = at.dataframe[1].value
    assert side.loc["val_roc_auc", "best"] == f"fast ({runs.ids['fast'][:8]})"
    differing = at.dataframe[2].value
    assert list(differing.index) == ["epochs"]  # batch_size is the same everywhere

    # Best run: the highest val_roc_auc, then the lowest.
    best = {m.label: m for m in at.metric}["max val_roc_auc"]
    assert best.value == "0.9500" and runs.ids["fast"] in best.help
    at.radio(key="best_mode").set_value("min").run()
    assert {m.label: m.value for m in at.metric}["min val_roc_auc"] == "0.8000"
    at.selectbox(key="best_metric").set_value("train_loss").run()
    assert at.radio(key="best_mode").value == "min"  # losses: lower is better, by default
    assert any("fast" in c.value for c in at.caption)


def test_monitor_runs_filter_and_links(
    env: None, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = page()
    assert not at.link_button  # an embedded store has no UI to link to
    assert any("mlflow ui --backend-store-uri" in c.value for c in at.caption)

    at.checkbox(key="with_monitor").check().run()
    assert "monitor-m-1" in list(at.dataframe[0].value["run"])

    at.text_input(key="filter").input("metrics.val_roc_auc > 0.85").run()
    no_errors(at)
    assert sorted(at.dataframe[0].value["run"]) == ["fast", "slow"]

    at.text_input(key="filter").input("metrics.val_roc_auc >>> 1").run()
    assert "The filter is not valid" in at.error[0].value
    assert "single quotes" in at.error[0].value

    monkeypatch.setenv("MLOPS_CONSOLE__MLFLOW_UI_URL", "http://mlflow.example:5000/")
    at = page()
    urls = [b.proto.url for b in at.link_button]
    assert f"http://mlflow.example:5000/#/experiments/{runs.experiment_id}" in urls
    assert (
        f"http://mlflow.example:5000/#/experiments/{runs.experiment_id}/runs/" + runs.ids["fast"]
        in urls
    )


def test_an_unreachable_tracking_server_is_a_message(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    at = page()
    assert not at.exception
    assert (
        "cannot be read" in at.error[0].value and "MLOPS_MLFLOW__TRACKING_URI" in at.error[0].value
    )
