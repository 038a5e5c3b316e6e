"""Figures logged with every training run.

Built with matplotlib's object API (``Figure``), not pyplot: no backend is chosen and
no global figure state is kept, so it is headless and safe in any thread.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix


def loss_curve(history: list[dict[str, float]]) -> Figure:
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="log loss", title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_roc_auc"] for h in history], marker="o", label="ROC AUC")
    ax2.plot(epochs, [h["val_pr_auc"] for h in history], marker="o", label="PR AUC")
    ax2.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    return fig


def calibration_plot(y_true: np.ndarray, p_positive: np.ndarray, bins: int = 10) -> Figure:
    frac_pos, mean_pred = calibration_curve(y_true, p_positive, n_bins=bins, strategy="quantile")
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.plot(mean_pred, frac_pos, marker="o", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate")
    ax.set(title="Calibration (holdout)")
    ax.legend()
    fig.tight_layout()
    return fig


def confusion_plot(y_true: np.ndarray, p_positive: np.ndarray, threshold: float = 0.5) -> Figure:
    cm = confusion_matrix(y_true, p_positive >= threshold, labels=[0, 1])
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual")
    ax.set(title=f"Confusion matrix (holdout, threshold {threshold})")
    fig.tight_layout()
    return fig
