"""The training loop: flat and readable, CUDA and mixed precision when present."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mlops.errors import TrainingError
from mlops.training.metrics import classification_metrics
from mlops.training.model import MLPClassifier, Preprocess, TrainConfig

logger = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float]], None]


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(requested)


def auto_log_mask(x: np.ndarray) -> np.ndarray:
    """log1p for non-negative, non-binary columns (amounts, counts, distances)."""
    nonneg = (x >= 0).all(axis=0)
    nonbinary = np.array([len(np.unique(col[:10_000])) > 2 for col in x.T])
    return nonneg & nonbinary


@torch.no_grad()
def predict_proba(model: MLPClassifier, x: np.ndarray, device: torch.device) -> np.ndarray:
    """P(positive) for the rows of ``x``, in batches, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(x), 65_536):
        batch = torch.from_numpy(x[i : i + 65_536]).to(device)
        out.append(torch.sigmoid(model(batch).float()).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def train(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    feature_names: list[str],
    on_epoch: EpochCallback | None = None,
) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """Fit an :class:`MLPClassifier`; returns it (on CPU, eval mode) and per-epoch history."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    if cfg.log_features:
        log_mask = np.array([f in cfg.log_features for f in feature_names])
    else:
        log_mask = auto_log_mask(x_train)
    model = MLPClassifier(Preprocess.fit(x_train, log_mask), x_train.shape[1], cfg).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    use_amp = cfg.mixed_precision and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    xt = torch.from_numpy(x_train).to(device)
    yt = torch.from_numpy(y_train).to(device)
    logger.info(
        "training on %s (%s), %d rows, %d features, %d epochs",
        device,
        f"amp {amp_dtype}" if use_amp else "fp32",
        len(x_train),
        x_train.shape[1],
        cfg.epochs,
    )
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_train))).to(device)
        total, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                loss = loss_fn(model(xt[idx]).float(), yt[idx])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {float(loss)} in epoch {epoch}: "
                    f"lower the learning rate (now {cfg.learning_rate:g}) or check the features"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        p_val = predict_proba(model, x_val, device)
        val = classification_metrics(y_val, p_val)
        record = {
            "epoch": float(epoch),
            "train_loss": total / max(seen, 1),
            "val_loss": val["log_loss"],
            "val_roc_auc": val["roc_auc"],
            "val_pr_auc": val["pr_auc"],
            "val_accuracy": val["accuracy"],
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        logger.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_roc_auc %.4f",
            epoch,
            cfg.epochs,
            record["train_loss"],
            record["val_loss"],
            record["val_roc_auc"],
        )
        if on_epoch is not None:
            on_epoch(record)
    model = model.cpu().eval()
    return model, history
