"""Classification metrics for a binary model, as plain floats."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    log_loss,
    roc_auc_score,
)


def classification_metrics(y_true: np.ndarray, p_positive: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss and accuracy (threshold 0.5) of ``p_positive``."""
    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(p_positive, dtype=np.float64), 1e-7, 1 - 1e-7)
    both_classes = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "accuracy": float(accuracy_score(y, p >= 0.5)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "rows": float(len(y)),
    }
