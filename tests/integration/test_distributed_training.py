"""Data-parallel training through torchrun (gloo on CPU), the train flow with ``gpus=2``,
and the GPU pool's global concurrency limit, against a real Prefect API and MLflow."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.concurrency.sync import concurrency

from flows.materialize import materialize
from flows.train import train
from mlops.artifacts import artifact_key
from mlops.data.generate import generate_transactions, write_events
from mlops.errors import TrainingError
from mlops.registry import CHALLENGER
from mlops.settings import Settings
from mlops.specs import transactions_path
from mlops.training.distributed import train_distributed
from mlops.training.loop import train as train_one_process
from mlops.training.model import TrainConfig
from tasks.training.fit import gpu_slot

pytestmark = [pytest.mark.integration]

END = datetime(2026, 2, 1, tzinfo=UTC)
FEATURES = ["a", "b", "c", "d"]


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2] > 0).astype(np.float32)
    return x, y


# --- torchrun, 2 gloo processes on the CPU --------------------------------------------
def test_two_gloo_processes_train_like_one() -> None:
    x_train, y_train = separable(3000, seed=1)
    x_val, y_val = separable(800, seed=2)
    base = dict(hidden=(16, 8), epochs=4, batch_size=128, learning_rate=1e-2, device="cpu")
    single, single_history = train_one_process(
        x_train, y_train, x_val, y_val, TrainConfig(**base), feature_names=FEATURES
    )
    seen: list[tuple[float, float]] = []  # (epoch, when the parent heard of it)
    model, history = train_distributed(
        x_train,
        y_train,
        x_val,
        y_val,
        TrainConfig(**base, gpus=2),
        feature_names=FEATURES,
        on_epoch=lambda record: seen.append((record["epoch"], time.monotonic())),
    )
    assert [r["epoch"] for r in history] == [1.0, 2.0, 3.0, 4.0]
    assert [e for e, _ in seen] == [1.0, 2.0, 3.0, 4.0]  # streamed live, in order
    assert seen[-1][1] > seen[0][1]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]  # it trains
    assert history[-1]["val_roc_auc"] > 0.98
    assert abs(history[-1]["val_roc_auc"] - single_history[-1]["val_roc_auc"]) < 0.02
    # the state dict written by rank 0 comes back as a CPU model in eval mode
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.state_dict().keys() == single.state_dict().keys()
    torch.testing.assert_close(model.preprocess.mean, single.preprocess.mean)
    with torch.no_grad():
        p_parallel = torch.sigmoid(model(torch.from_numpy(x_val))).numpy()
        p_single = torch.sigmoid(single(torch.from_numpy(x_val))).numpy()
    assert np.mean((p_parallel > 0.5) == (p_single > 0.5)) > 0.97
    assert np.corrcoef(p_parallel, p_single)[0, 1] > 0.95


def test_a_worker_error_is_raised_with_its_message() -> None:
    x, y = separable(400, seed=3)
    cfg = TrainConfig(
        hidden=(4,), epochs=2, batch_size=64, learning_rate=1e30, device="cpu", gpus=2
    )
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train_distributed(x, y, x, y, cfg, feature_names=FEATURES)


# --- the train flow ---------------------------------------------------------------------
@pytest.fixture
def data(mlops_home: Path) -> Settings:
    settings = Settings()
    settings.ensure_home()
    events = generate_transactions(n_entities=600, days=28, seed=4, end=END)
    write_events(events, Path(transactions_path(settings)))
    return settings


def in_thread(target: Callable[[], None]) -> threading.Thread:
    """A started daemon thread that sees this thread's Prefect settings (the test API)."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("prefect_api")
def test_train_flow_data_parallel_on_cpu(data: Settings) -> None:
    materialize()
    result = train(epochs=3, batch_size=256, seed=1, device="cpu", gpus=2)

    client = MlflowClient(tracking_uri=data.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["processes"], params["ddp_backend"]) == ("2", "gloo")
    assert (params["device"], params["precision"], params["cfg.gpus"]) == ("cpu", "fp32", "2")
    losses = client.get_metric_history(result["run_id"], "train_loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert losses[-1].value < losses[0].value
    assert result["holdout_roc_auc"] > 0.6
    version = client.get_model_version_by_alias("fraud_detector", CHALLENGER)
    assert str(version.version) == result["version"]

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("train", "fraud_detector", "progress")])
            )
        )
    assert artifacts and artifacts[0].type == "progress"
    assert any(a.data == pytest.approx(100.0) for a in artifacts)


@pytest.fixture
def gpu_pool(monkeypatch: pytest.MonkeyPatch, data: Settings) -> Iterator[str]:
    """A GPU pool name in ``MLOPS_TRAINING__GPU_POOL`` whose limit ``gpu:<pool>`` is 1."""
    pool = f"testpool-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_TRAINING__GPU_POOL", pool)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=f"gpu:{pool}", limit=1)
        )
    yield pool
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(f"gpu:{pool}")


@pytest.mark.usefixtures("prefect_api")
def test_train_flow_waits_for_and_holds_the_gpu_pool_slot(data: Settings, gpu_pool: str) -> None:
    name = f"gpu:{gpu_pool}"
    materialize()
    held, release, stop = threading.Event(), threading.Event(), threading.Event()
    released_at: list[float] = []
    samples: list[tuple[float, int]] = []  # (time, active slots)

    def another_training() -> None:  # holds the pool's only slot for a few seconds
        with concurrency(name, occupy=1):
            held.set()
            release.wait(timeout=60)
        released_at.append(time.time())

    def watch() -> None:
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                limit = client.read_global_concurrency_limit_by_name(name)
                samples.append((time.time(), limit.active_slots))
                time.sleep(0.1)

    holder = in_thread(another_training)
    assert held.wait(timeout=30), "the test could not take the slot itself"
    watcher = in_thread(watch)
    threading.Timer(4.0, release.set).start()
    try:
        result = train(epochs=2, batch_size=256, seed=1, device="cpu")
    finally:
        release.set()
        stop.set()
        holder.join(timeout=30)
        watcher.join(timeout=30)

    client = MlflowClient(tracking_uri=data.tracking_uri)
    first_epoch = client.get_metric_history(result["run_id"], "train_loss")[0]
    # the fit began only once the other training had let go of the GPU
    assert released_at and first_epoch.timestamp / 1000 > released_at[0]
    # … and the flow then held the slot itself
    assert any(n == 1 for t, n in samples if t > released_at[0])
    assert max(n for _, n in samples) == 1
    with get_client(sync_client=True) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(name).active_slots == 0


@pytest.mark.usefixtures("prefect_api")
def test_a_missing_gpu_limit_warns_and_does_not_block(
    mlops_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = f"missing-{uuid.uuid4().hex[:8]}"

    @flow
    def uses_the_gpu() -> str:
        with gpu_slot(pool):
            return "trained"

    with caplog.at_level(logging.WARNING):
        assert uses_the_gpu() == "trained"
    assert f"the global concurrency limit 'gpu:{pool}' does not exist" in caplog.text
    assert f"prefect gcl create gpu:{pool}" in caplog.text


@pytest.mark.usefixtures("prefect_api")
def test_a_multi_gpu_training_holds_one_slot_per_gpu(mlops_home: Path) -> None:
    pool = f"multi-{uuid.uuid4().hex[:8]}"
    name = f"gpu:{pool}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=4))

    @flow
    def uses_two_gpus() -> int:
        with gpu_slot(pool, gpus=2), get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots

    try:
        assert uses_two_gpus() == 2
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)
