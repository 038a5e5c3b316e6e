"""Training pieces: preprocessing, the loop, the time split and the metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score

from mlops.errors import TrainingError
from mlops.training.data import time_split
from mlops.training.loop import auto_log_mask, pick_device, predict_proba, train
from mlops.training.metrics import classification_metrics
from mlops.training.model import MLPClassifier, Preprocess, TrainConfig

HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "val_roc_auc",
    "val_pr_auc",
    "val_accuracy",
    "epoch_seconds",
}


# --- preprocessing --------------------------------------------------------------------
def test_preprocess_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack(
        [
            rng.lognormal(3, 1, 500),  # heavy-tailed amount: logged
            rng.normal(0, 5, 500),  # signed: not logged
            rng.integers(0, 50, 500),  # counts: logged
            np.full(500, 7.0),  # constant: std falls back to 1
        ]
    ).astype(np.float32)
    mask = np.array([True, False, True, False])
    pre = Preprocess.fit(x, mask)

    z = x.astype(np.float64).copy()
    z[:, mask] = np.log1p(z[:, mask])
    mean, std = z.mean(axis=0), z.std(axis=0)
    std[3] = 1.0
    np.testing.assert_allclose(pre.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(pre.std.numpy(), std, rtol=1e-5)

    fresh = np.column_stack(
        [
            rng.lognormal(3, 1, 64),
            rng.normal(0, 5, 64),
            rng.integers(0, 50, 64),
            rng.normal(7, 1, 64),
        ]
    ).astype(np.float32)
    fresh[0, 0] = -3.0  # a negative value in a logged column is clamped to 0 first
    zf = fresh.astype(np.float64).copy()
    zf[:, mask] = np.log1p(np.clip(zf[:, mask], 0, None))
    expected = (zf - mean) / std
    with torch.no_grad():
        got = pre(torch.from_numpy(fresh)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert got[0, 0] == pytest.approx((0.0 - mean[0]) / std[0], rel=1e-5)
    # the training set itself comes out standardized
    with torch.no_grad():
        zt = pre(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(zt[:, :3].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(zt[:, :3].std(axis=0), 1, atol=1e-4)


def test_preprocess_is_saved_with_the_model() -> None:
    pre = Preprocess(np.array([True, False]), np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    state = MLPClassifier(pre, 2, TrainConfig(hidden=(4,))).state_dict()
    assert state["preprocess.log_mask"].tolist() == [True, False]
    assert state["preprocess.mean"].tolist() == [1.0, 2.0]
    assert state["preprocess.std"].tolist() == [3.0, 4.0]


def test_auto_log_mask() -> None:
    x = np.array(
        [[0.0, 1.0, -1.0, 5.0], [1.0, 0.0, 2.0, 10.0], [1.0, 1.0, 3.0, 0.0]], dtype=np.float32
    )
    # binary → no; negative → no; non-negative with > 2 values → yes
    assert auto_log_mask(x).tolist() == [False, False, False, True]


# --- the loop -------------------------------------------------------------------------
def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(0, 1, n), rng.normal(0, 1, n), rng.lognormal(2, 1, n), rng.normal(0, 1, n)]
    ).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    return x, y


CFG = TrainConfig(hidden=(16, 8), epochs=4, batch_size=128, learning_rate=1e-2, device="cpu")


@pytest.fixture(scope="module")
def trained() -> tuple[MLPClassifier, list[dict[str, float]], list[dict[str, float]]]:
    x_train, y_train = separable(1500, seed=1)
    x_val, y_val = separable(500, seed=2)
    seen: list[dict[str, float]] = []
    model, history = train(
        x_train,
        y_train,
        x_val,
        y_val,
        CFG,
        feature_names=["a", "b", "c", "d"],
        on_epoch=seen.append,
    )
    return model, history, seen


def test_train_learns_a_separable_problem(trained) -> None:
    model, history, _ = trained
    assert len(history) == CFG.epochs
    assert history[-1]["val_roc_auc"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < math.log(2)  # better than a coin
    x_test, y_test = separable(400, seed=3)
    p = predict_proba(model, x_test, torch.device("cpu"))
    assert roc_auc_score(y_test, p) > 0.9


def test_train_history(trained) -> None:
    _, history, seen = trained
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0, 4.0]
    for record in history:
        assert set(record) == HISTORY_KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in record.values())
        assert 0.0 <= record["val_accuracy"] <= 1.0
        assert record["epoch_seconds"] >= 0.0
    assert seen == history  # the callback got every epoch's record


def test_train_returns_cpu_model_in_eval_mode(trained) -> None:
    model, _, _ = trained
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    # auto log mask: only the log-normal column is non-negative and non-binary
    assert model.preprocess.log_mask.tolist() == [False, False, True, False]


def test_train_uses_the_configured_log_features() -> None:
    x, y = separable(200, seed=4)
    cfg = TrainConfig(hidden=(4,), epochs=1, batch_size=64, device="cpu", log_features=("b",))
    model, history = train(x, y, x, y, cfg, feature_names=["a", "b", "c", "d"])
    assert model.preprocess.log_mask.tolist() == [False, True, False, False]
    assert len(history) == 1


def test_train_is_reproducible() -> None:
    x, y = separable(300, seed=5)
    cfg = TrainConfig(hidden=(8,), epochs=2, batch_size=64, device="cpu", seed=7)
    names = ["a", "b", "c", "d"]
    m1, h1 = train(x, y, x, y, cfg, feature_names=names)
    m2, h2 = train(x, y, x, y, cfg, feature_names=names)
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_predict_proba(trained) -> None:
    model, _, _ = trained
    x, _ = separable(10, seed=6)
    p = predict_proba(model, x, torch.device("cpu"))
    with torch.no_grad():
        expected = model.probabilities(torch.from_numpy(x))[:, 1].numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert predict_proba(model, x[:0], torch.device("cpu")).shape == (0,)


def test_pick_device() -> None:
    assert pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            pick_device("cuda")


# --- time split -----------------------------------------------------------------------
def labelled(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # minute resolution over ~3 days: plenty of ties
    stamps = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 3 * 24 * 6, n) * 10, unit="min"
    )
    return pd.DataFrame(
        {
            "row_id": np.arange(n),
            "ts": stamps,
            "f1": rng.normal(size=n),
            "f2": rng.normal(size=n),
            "label": rng.integers(0, 2, n),
        }
    )


def test_time_split_is_time_ordered_and_disjoint() -> None:
    frame = labelled(400)
    frame.loc[[3, 17, 99], "f2"] = np.nan
    frame.loc[[5], "label"] = np.nan
    s = time_split(frame, timestamp="ts", label="label", feature_names=["f2", "f1"])

    assert s.dropped_rows == 4
    parts = (s.train, s.validation, s.holdout)
    ids = [set(p.frame["row_id"]) for p in parts]
    assert not ids[0] & ids[1] and not ids[1] & ids[2] and not ids[0] & ids[2]
    assert set.union(*ids) == set(range(400)) - {3, 5, 17, 99}
    assert s.train.frame["ts"].max() < s.validation.frame["ts"].min()
    assert s.validation.frame["ts"].max() < s.holdout.frame["ts"].min()
    t1, t2 = s.boundaries
    assert t1 <= t2
    assert s.train.frame["ts"].max() < t1 <= s.validation.frame["ts"].min()
    assert s.validation.frame["ts"].max() < t2 <= s.holdout.frame["ts"].min()
    # roughly 70 / 15 / 15
    assert 0.6 < len(s.train.frame) / 396 < 0.8
    for part in parts:
        assert part.x.dtype == np.float32 and part.y.dtype == np.float32
        assert part.x.shape == (len(part.frame), 2)
        np.testing.assert_array_equal(part.x[:, 0], part.frame["f2"].to_numpy(np.float32))
        np.testing.assert_array_equal(part.y, part.frame["label"].to_numpy(np.float32))
        assert part.frame.index.tolist() == list(range(len(part.frame)))


def test_time_split_needs_enough_rows() -> None:
    frame = labelled(60)
    frame.loc[:15, "f1"] = np.nan  # 44 complete rows left
    with pytest.raises(TrainingError, match="only 44 complete training rows"):
        time_split(frame, timestamp="ts", label="label", feature_names=["f1", "f2"])


def test_time_split_needs_both_classes() -> None:
    frame = labelled(200).assign(label=0)
    with pytest.raises(TrainingError, match="not both classes of 'label'"):
        time_split(frame, timestamp="ts", label="label", feature_names=["f1"])


def test_time_split_names_the_split_missing_a_class() -> None:
    frame = labelled(200)
    late = frame["ts"] >= frame["ts"].quantile(0.85)
    frame.loc[late, "label"] = 1
    with pytest.raises(TrainingError, match="the holdout split"):
        time_split(frame, timestamp="ts", label="label", feature_names=["f1"])


# --- metrics --------------------------------------------------------------------------
def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 300), 0, 1).astype(np.float32)
    m = classification_metrics(y.astype(np.float32), p)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-6)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["positive_rate"] == pytest.approx(y.mean())
    assert m["rows"] == 300.0
    assert all(type(v) is float for v in m.values())


def test_classification_metrics_edge_cases() -> None:
    perfect = classification_metrics(np.array([0, 1, 1]), np.array([0.0, 1.0, 1.0]))
    assert perfect["roc_auc"] == 1.0
    assert perfect["accuracy"] == 1.0
    assert math.isfinite(perfect["log_loss"]) and perfect["log_loss"] < 1e-5

    one_class = classification_metrics(np.array([1, 1]), np.array([0.2, 0.9]))
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["pr_auc"])
    assert one_class["accuracy"] == 0.5
    assert one_class["positive_rate"] == 1.0


def test_time_split_keeps_ties_at_a_boundary_together() -> None:
    """Rows at the very instant of a boundary all go to the later split."""
    rng = np.random.default_rng(1)
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    stamps = [t0 + pd.Timedelta(minutes=i) for i in range(110)]
    stamps += [t0 + pd.Timedelta(hours=5)] * 60  # spans the 70 % quantile
    stamps += [t0 + pd.Timedelta(hours=6, minutes=i) for i in range(30)]
    frame = pd.DataFrame(
        {"ts": stamps, "f1": rng.normal(size=200), "label": np.arange(200) % 2}
    ).sample(frac=1.0, random_state=0)
    s = time_split(frame, timestamp="ts", label="label", feature_names=["f1"])
    assert s.boundaries[0] == t0 + pd.Timedelta(hours=5)
    assert len(s.train.frame) == 110
    assert (s.validation.frame["ts"] == t0 + pd.Timedelta(hours=5)).sum() == 60
    assert len(s.train.frame) + len(s.validation.frame) + len(s.holdout.frame) == 200


def test_a_data_parallel_job_counts_as_finished_only_past_the_final_barrier(
    tmp_path: Path,
) -> None:
    """torchrun's non-zero exit after every rank passed the barrier and rank 0 saved the
    model (a gloo teardown abort) keeps the model; any other failure does not."""
    from mlops.training.distributed import DONE_FILE, MODEL_FILE, _finished

    assert not _finished(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(b"weights")
    assert not _finished(tmp_path)  # saved, but a rank may not have finished
    (tmp_path / DONE_FILE).write_text("ok\n")
    assert _finished(tmp_path)
    (tmp_path / "error-rank1.json").write_text('{"rank": 1}')
    assert not _finished(tmp_path)
