"""The ``mlops`` command in-process (Typer's runner) on a temporary home."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops.cli.main import app

pytestmark = pytest.mark.usefixtures("prefect_api")

runner = CliRunner()
COMMANDS = [
    "demo",
    "generate",
    "import-events",
    "materialize",
    "train",
    "evaluate",
    "serve",
    "deploy",
    "features",
    "datasets",
    "up",
    "status",
]


@pytest.mark.parametrize("command", [*COMMANDS, "settings"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_generate_then_import_csv_roundtrip(mlops_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.parquet"
    result = runner.invoke(
        app,
        ["generate", "--entities", "60", "--days", "5", "--out", str(out), "--end", "2026-01-01"],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["card_id"].nunique() > 30
    csv = tmp_path / "events.csv"
    frame.to_csv(csv, index=False)

    result = runner.invoke(app, ["import-events", str(csv)])
    assert result.exit_code == 0, result.output
    imported = pd.read_parquet(mlops_home / "data" / "transactions.parquet")
    assert len(imported) == len(frame)
    assert str(imported["event_timestamp"].dt.tz) == "UTC"

    result = runner.invoke(app, ["materialize"])
    assert result.exit_code == 0, result.output
    assert "card_transactions" in result.output


def test_import_rejects_a_file_missing_a_column(mlops_home: Path, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    pd.DataFrame(
        {"card_id": ["a"], "event_timestamp": ["2026-01-01T00:00:00Z"], "amount": [1.0]}
    ).to_csv(csv, index=False)
    result = runner.invoke(app, ["import-events", str(csv)])
    assert result.exit_code == 1
    assert "missing column" in result.output
    assert "is_online" in result.output
    assert not (mlops_home / "data" / "transactions.parquet").exists()


def test_generate_rejects_bad_arguments(mlops_home: Path) -> None:
    result = runner.invoke(app, ["generate", "--concept-drift", "2"])
    assert result.exit_code == 1
    assert "concept_drift" in result.output


def test_settings_prints_resolved_paths_without_secrets(mlops_home: Path) -> None:
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["home"] == str(mlops_home.resolve())
    assert shown["mlflow"]["tracking_uri"] == f"sqlite:///{mlops_home.resolve()}/mlflow.db"
    assert "change-me" not in result.output


def test_evaluate_without_a_model_fails_cleanly(mlops_home: Path) -> None:
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 1
    assert "run the train flow" in result.output


def test_deploy_registers_the_deployments(mlops_home: Path) -> None:
    result = runner.invoke(app, ["deploy"])
    assert result.exit_code == 0, result.output
    for name in (
        "materialize/card_transactions",
        "train/fraud_detector",
        "evaluate/fraud_detector",
    ):
        assert f"registered {name}" in result.output


def test_train_gpus_and_evaluate_folds_reach_the_flows(mlops_home: Path) -> None:
    from mlflow import MlflowClient

    from mlops.registry import Tags
    from mlops.settings import Settings

    steps = [
        ["generate", "--entities", "500", "--days", "21", "--end", "2026-02-01", "--seed", "2"],
        ["materialize"],
        ["train", "--epochs", "2", "--batch-size", "256", "--device", "cpu", "--gpus", "2"],
        ["evaluate", "--folds", "2"],
    ]
    outputs = []
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{args}: {result.output}"
        outputs.append(result.output)

    settings = Settings()
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.data.params["processes"], run.data.params["ddp_backend"]) == ("2", "gloo")

    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.tags[Tags.GATE_FOLDS] == "2"
    assert len(version.tags[Tags.GATE_FOLD_ROC_AUC].split(",")) == 2
    assert "walk-forward folds" in outputs[-1]


@pytest.mark.parametrize(
    ("args", "option", "meaning"),
    [
        (["train", "--gpus", "0"], "--gpus", "data-parallel training processes"),
        (["evaluate", "--folds", "0"], "--folds", "time folds of the holdout"),
        (["evaluate", "--folds", "-3"], "--folds", "not -3"),
    ],
)
def test_counts_below_one_are_refused_before_any_flow_runs(
    mlops_home: Path, args: list[str], option: str, meaning: str
) -> None:
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "at least 1" in result.output
    assert meaning in result.output
    assert not (mlops_home / "mlflow.db").exists()  # refused before the flow started
