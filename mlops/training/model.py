"""The classifier: raw features → in-graph preprocessing → MLP → class probabilities.

Preprocessing is part of the module (and so of the ONNX graph): serving passes raw
feature values. Non-negative heavy-tailed features go through ``log1p`` first, then
every feature is standardized with the training set's mean and standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mlops.errors import TrainingError


@dataclass
class TrainConfig:
    """Everything that decides a training run (logged as MLflow params)."""

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: bool = True  # used on CUDA only
    gpus: int = 1  # data-parallel processes (torchrun when > 1): GPUs, or CPU processes
    log_features: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be ≥ 1 (got {self.epochs})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be ≥ 1 (got {self.batch_size})")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            problems.append(f"learning_rate must be a positive number (got {self.learning_rate})")
        if not self.hidden or any(h < 1 for h in self.hidden):
            problems.append(f"hidden sizes must be positive (got {list(self.hidden)})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.gpus < 1:
            problems.append(f"gpus must be ≥ 1 (got {self.gpus})")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda (got {self.device!r})")
        if problems:
            raise TrainingError("invalid training configuration: " + "; ".join(problems))


class Preprocess(nn.Module):
    """``(log1p(max(x, 0)) if log_mask else x)`` then ``(x - mean) / std``."""

    log_mask: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, log_mask: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("log_mask", torch.as_tensor(log_mask, dtype=torch.bool))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    @staticmethod
    def fit(x: np.ndarray, log_mask: np.ndarray) -> Preprocess:
        """Statistics of the training matrix ``x`` (after the log transform)."""
        z = np.where(log_mask, np.log1p(np.clip(x, 0, None)), x)
        mean = z.mean(axis=0)
        std = z.std(axis=0)
        std = np.where(std < 1e-6, 1.0, std)
        return Preprocess(log_mask, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)
        return (z - self.mean) / self.std


class MLPClassifier(nn.Module):
    """Binary classifier; ``forward`` returns logits, ``probabilities`` [N, 2]."""

    def __init__(self, preprocess: Preprocess, n_features: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.preprocess = preprocess
        layers: list[nn.Module] = []
        width = n_features
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x)).squeeze(-1)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.forward(x))
        return torch.stack([1.0 - p, p], dim=-1)


class ProbabilityHead(nn.Module):
    """What is exported: raw features in, probabilities [N, 2] out."""

    def __init__(self, model: MLPClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(features)
