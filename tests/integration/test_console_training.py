"""The Training page: the form starts flow runs of the real ``train/<model>`` and
``train/<model>-gpu`` deployments (registered in the session's Prefect API) with the
chosen parameters, and the live view follows a run as the training flow reports it.

While a run trains, the flow writes two things the page reads: the progress artifact
``train-<model>-progress`` of the flow run (``tasks/training/fit.py``) and the MLflow
run tagged ``mlops.flow_run_id`` with one metric point per epoch. The follow test writes
them through the same APIs, step by step, so each step's view is checked exactly (no
worker runs the flow here; the flow itself is tested in ``tests/integration/test_flows.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from mlflow import MlflowClient

from mlops.artifacts import artifact_key
from mlops.datasets import add_dataset, open_catalog
from mlops.registry import configure_mlflow
from mlops.settings import Settings
from tests.integration._console import (
    TOKEN,
    console,
    delete_flow_runs,
    platform_env,
    server_navigation,
    texts,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

MODEL = "fraud_detector"
SUBMIT = "FormSubmitter:train-Start training"
STARTED: list[str] = []
"""Flow runs the test started (deleted after it: no later runner may pick them up)."""


@pytest.fixture
def deployed(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``train/<model>`` and ``train/<model>-gpu`` registered, as ``mlops deploy`` does."""
    from prefect.client.orchestration import get_client

    from deployments import model_deployments
    from deployments.pools import ensure_pools

    settings = platform_env(monkeypatch)
    with get_client(sync_client=True) as client:
        ensure_pools(client, settings)
    for deployment in model_deployments(MODEL, settings)[:2]:  # train, train-gpu
        deployment.apply()
    STARTED.clear()
    with server_navigation():
        yield settings
    delete_flow_runs(STARTED)


def started_run(message: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    run_id = message.split("flow run ")[1].split(" ")[0]
    STARTED.append(run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        assert run.deployment_id is not None
        deployment = client.read_deployment(run.deployment_id)
    return {"id": run_id, "deployment": f"train/{deployment.name}", "parameters": run.parameters}


def progress(at: Any) -> tuple[float, str]:
    (bar,) = at.get("progress")
    return bar.proto.value / 100, bar.proto.text


def test_the_form_starts_runs_of_the_training_deployments(
    deployed: Settings, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("card_id,ts,is_fraud\nc1,2026-01-01T00:00:00Z,0\nc2,2026-01-02T00:00:00Z,1\n")
    catalog = open_catalog(deployed.datasets.catalog_url or "")
    add_dataset(
        settings=deployed,
        catalog=catalog,
        path=labels,
        name="labels",
        entity="card_id",
        timestamp="ts",
    )
    catalog.engine.dispose()

    at = console("training", secret=TOKEN).run()
    assert not at.exception, at.exception
    assert texts(at.title) == ["Training"]
    assert at.selectbox[0].options == [MODEL]
    at.number_input[0].set_value(4)  # epochs
    at.number_input[1].set_value(256)  # batch size
    at.number_input[2].set_value(0.01)  # learning rate
    at.text_input[0].input("16, 8")
    at.selectbox[2].set_value("cpu")
    at.button(key=SUBMIT).click().run()
    assert not at.exception and not at.error, texts(at.error)
    run = started_run(at.success[0].value)
    assert run["deployment"] == f"train/{MODEL}"
    assert run["parameters"] == {
        "model_name": MODEL,
        "epochs": 4,
        "batch_size": 256,
        "learning_rate": 0.01,
        "hidden": [16, 8],
        "device": "cpu",
    }
    # it is followed at once: scheduled, waiting for a worker of the local pool
    follow = at.selectbox[-1]
    assert follow.value == run["id"]
    assert progress(at) == (0.0, "waiting for the first epoch")
    assert any("Waiting for a worker of the 'local' pool" in i for i in texts(at.info))

    at.radio[0].set_value("gpu")
    at.number_input[3].set_value(2)  # GPUs
    at.selectbox[1].set_value("labels@1")
    at.button(key=SUBMIT).click().run()
    run = started_run(at.success[0].value)
    assert run["deployment"] == f"train/{MODEL}-gpu"
    assert run["parameters"]["gpus"] == 2
    assert run["parameters"]["labels_dataset"] == "labels@1"
    assert run["parameters"]["device"] == "cuda"  # the deployment's own, not the form's
    assert any("Waiting for a worker of the 'gpu' pool" in i for i in texts(at.info))

    at.text_input[0].input("16, x")
    at.button(key=SUBMIT).click().run()
    (message,) = texts(at.error)
    assert "hidden sizes: 'x' is not a positive whole number" in message
    assert len(STARTED) == 2


def test_a_run_is_followed_live_until_it_ends(deployed: Settings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
    from prefect.states import Completed, Running

    at = console("training", secret=TOKEN).run()
    at.number_input[0].set_value(4)
    at.button(key=SUBMIT).click().run()
    run = started_run(at.success[0].value)
    flow_run_id = UUID(run["id"])

    experiment_id = configure_mlflow(deployed)
    mlflow = MlflowClient(deployed.tracking_uri, deployed.registry_uri)
    mlflow_run = mlflow.create_run(experiment_id, tags={"mlops.flow_run_id": run["id"]})
    mlflow_run_id = mlflow_run.info.run_id
    at.run()
    assert any(c.startswith(f"MLflow run {mlflow_run_id}") for c in texts(at.caption))
    assert not at.get("vega_lite_chart")

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(), force=True)
        artifact = client.create_artifact(
            ArtifactCreate(
                key=artifact_key("train", MODEL, "progress"),
                type="progress",
                data=0.0,
                flow_run_id=flow_run_id,
            )
        )
        for epoch, (train_loss, val_loss, auc) in enumerate(
            [(0.61, 0.58, 0.71), (0.44, 0.47, 0.83)], start=1
        ):
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss)):
                mlflow.log_metric(mlflow_run_id, key, value, step=epoch)
            mlflow.log_metric(mlflow_run_id, "val_roc_auc", auc, step=epoch)
            client.update_artifact(artifact.id, ArtifactUpdate(data=100.0 * epoch / 4))
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    assert progress(at) == (0.5, "epoch 2/4")
    assert "🔵 Running" in [m.value for m in at.metric]
    loss, validation = at.get("vega_lite_chart")
    assert '"loss"' in loss.proto.spec and '"validation"' in validation.proto.spec
    assert not at.success  # nothing registered yet

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Completed(), force=True)
    mlflow.log_metric(mlflow_run_id, "holdout_roc_auc", 0.8765)
    name = f"console-train-{run['id'][:8]}"
    mlflow.create_registered_model(name)
    version = mlflow.create_model_version(
        name, f"runs:/{mlflow_run_id}/model", run_id=mlflow_run_id
    )
    at.run()
    assert progress(at) == (1.0, "epoch 4/4")
    holdout = at.dataframe[-1].value
    assert holdout["roc_auc"].iloc[0] == pytest.approx(0.8765)
    assert texts(at.success)[-1].startswith(f"Registered {name} version {version.version}")
    assert at.session_state["training_ended"][run["id"]] is True  # the timer stopped


def test_a_failed_run_says_why_and_what_to_do(deployed: Settings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    at = console("training", secret=TOKEN).run()
    at.button(key=SUBMIT).click().run()
    run = started_run(at.success[0].value)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            UUID(run["id"]), Failed(message="no materialized features"), force=True
        )
    at.run()
    (message,) = texts(at.error)
    assert "no materialized features" in message and "Prefect UI" in message
