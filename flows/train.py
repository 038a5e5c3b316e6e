"""Train a model spec: point-in-time training set → PyTorch MLP → MLflow → ONNX → registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from mlops import events
from mlops.artifacts import artifact_key
from mlops.features.window import align
from mlops.lifecycle import on_flow_crashed
from mlops.registry import Tags, configure_mlflow, finish_run, git_sha, mlflow_client
from mlops.settings import Settings
from mlops.specs import get_spec
from mlops.training.device import plan_training
from mlops.training.model import TrainConfig
from tasks.training.build_training_set import build_training_set, load_labels
from tasks.training.export_onnx import export_and_check
from tasks.training.fit import fit_model, gpu_slot
from tasks.training.register import register_model
from tasks.training.score_holdout import score_holdout
from tasks.training.split import split_by_time
from tasks.training.start_run import start_run


@flow(
    name="train",
    log_prints=False,
    on_crashed=[on_flow_crashed],
    on_cancellation=[on_flow_crashed],
)
def train(
    model_name: str = "fraud_detector",
    start: datetime | None = None,
    end: datetime | None = None,
    epochs: int = 8,
    batch_size: int = 1024,
    learning_rate: float = 2e-3,
    hidden: list[int] | None = None,
    device: str = "auto",
    seed: int = 0,
    labels_dataset: str | None = None,
    gpus: int = 1,
) -> dict[str, Any]:
    """Train ``model_name`` on labels in [start, end) (default: all materialized data),
    register the ONNX model as a new version and alias it ``challenger``.

    ``labels_dataset`` (``name`` or ``name@version``) takes the label rows from a
    registered dataset instead of the spec's label table.

    ``device="auto"`` trains on CUDA when present (with mixed precision unless
    ``MLOPS_TRAINING__MIXED_PRECISION=false``); ``gpus`` > 1 trains data-parallel on that
    many GPUs (or CPU processes with ``device="cpu"``) through torchrun. On a GPU work
    pool (``MLOPS_TRAINING__GPU_POOL``) the fit holds one slot per GPU it trains on of
    the global concurrency limit ``gpu:<pool>``."""
    logger = get_run_logger()
    settings = Settings()
    spec = get_spec(model_name, settings)
    cfg = TrainConfig(
        hidden=tuple(hidden or (64, 32)),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        mixed_precision=settings.training.mixed_precision,
        gpus=gpus,
    )
    plan = plan_training(cfg.device, cfg.gpus, cfg.mixed_precision)
    experiment_id = configure_mlflow(settings)
    client = mlflow_client(settings)
    lo, hi = align(start, end)

    labels: pd.DataFrame = load_labels(spec, settings, lo, hi, labels_dataset)
    training_set: pd.DataFrame = build_training_set(spec, settings.offline_path, labels)
    splits = split_by_time(spec, training_set)
    ts = training_set[spec.timestamp]
    data_window = f"{ts.min().isoformat()}/{ts.max().isoformat()}"
    run_id = start_run(client, experiment_id, spec, cfg, splits, data_window, plan)
    with finish_run(client, run_id):
        with gpu_slot(settings.training.gpu_pool, plan.gpu_slots):
            model, history = fit_model(client, run_id, spec, cfg, splits, plan)
        metrics = score_holdout(client, run_id, model, history, splits)
        proto, parity = export_and_check(client, run_id, model, splits)
        version = register_model(
            client,
            run_id,
            spec,
            proto,
            splits,
            tags={
                Tags.DATA_WINDOW: data_window,
                Tags.TRAIN_FLOW_RUN_ID: str(flow_run.get_id() or ""),
                Tags.GIT_SHA: git_sha(),
                Tags.PARITY_MAX_ABS_DIFF: f"{parity:.3g}",
                **{f"holdout.{k}": f"{v:.6g}" for k, v in metrics.items()},
            },
            settings=settings,
        )
    summary: dict[str, Any] = {
        "model": spec.name,
        "version": version,
        "run_id": run_id,
        "data_window": data_window,
        "parity_max_abs_diff": parity,
        **{f"holdout_{k}": v for k, v in metrics.items()},
    }
    create_table_artifact(
        [summary], key=artifact_key("train", spec.name), description="Training result"
    )
    events.emit(events.MODEL_REGISTERED, events.model_resource(spec.name), summary)
    logger.info("registered %s version %s (challenger): %s", spec.name, version, metrics)
    return summary
