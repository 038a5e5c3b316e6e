"""The training loop: flat and readable, CUDA and mixed precision when present.

The same loop runs in one process and in each process of a data-parallel training
(``mlops.training.distributed``, launched by torchrun): when ``torch.distributed`` is
initialized, the model is wrapped in ``DistributedDataParallel``, each rank trains on
its shard of every epoch (``DistributedSampler``) and rank 0 alone evaluates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from mlops.errors import TrainingError
from mlops.training.device import pick_device, pick_precision, precision_name
from mlops.training.metrics import classification_metrics
from mlops.training.model import MLPClassifier, Preprocess, TrainConfig

__all__ = ["auto_log_mask", "pick_device", "predict_proba", "train"]

logger = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float]], None]


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
    device: torch.device | None = None,
) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """Fit an :class:`MLPClassifier`; returns it (on CPU, eval mode) and per-epoch history.

    ``device`` overrides ``cfg.device`` (a torchrun worker passes its own GPU). In a
    data-parallel run ``cfg.batch_size`` is the global batch (each of the N ranks takes
    ``batch_size // N`` rows a step), and only rank 0 evaluates, calls ``on_epoch`` and
    returns a history (the other ranks return an empty one)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(cfg.seed)
    device = device or pick_device(cfg.device)
    if cfg.log_features:
        log_mask = np.array([f in cfg.log_features for f in feature_names])
    else:
        log_mask = auto_log_mask(x_train)
    model = MLPClassifier(Preprocess.fit(x_train, log_mask), x_train.shape[1], cfg).to(device)
    net: nn.Module = model
    if distributed:
        # the preprocessing buffers are fitted on the full training set on every rank:
        # identical, so they need no broadcast on each forward
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )
        torch.manual_seed(cfg.seed + rank)  # a dropout stream of each rank's own
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    amp_dtype = pick_precision(device, cfg.mixed_precision)
    use_amp = amp_dtype is not None
    # bfloat16 has float32's range: only float16 needs loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    xt = torch.from_numpy(x_train).to(device)
    yt = torch.from_numpy(y_train).to(device)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(xt, yt), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    step_rows = max(1, cfg.batch_size // world)
    logger.info(
        "training on %s (%s), rank %d of %d, %d rows, %d features, %d epochs",
        device,
        precision_name(amp_dtype),
        rank,
        world,
        len(x_train),
        x_train.shape[1],
        cfg.epochs,
    )
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        net.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long, device=device)
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, rows
        for i in range(0, len(order), step_rows):
            idx = order[i : i + step_rows]
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                loss = loss_fn(net(xt[idx]).float(), yt[idx])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {float(loss.detach())} in epoch {epoch}: "
                    f"lower the learning rate (now {cfg.learning_rate:g}) or check the features"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total[0] += loss.detach().double() * len(idx)
            total[1] += len(idx)
        if distributed:
            dist.all_reduce(total)
        if rank != 0:
            continue
        p_val = predict_proba(model, x_val, device)
        val = classification_metrics(y_val, p_val)
        loss_sum, rows = total.tolist()
        record = {
            "epoch": float(epoch),
            "train_loss": loss_sum / max(rows, 1.0),
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
