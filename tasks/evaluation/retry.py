"""The retry policy of the evaluation tasks' registry and tracking-server calls."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

MLFLOW_RETRIES: dict[str, Any] = {
    "retries": 3,
    # 2 s, 4 s, 8 s, each stretched by up to 50 %: a restarting MLflow server or a
    # locked SQLite file gets time to come back, and parallel runs do not retry in step
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
}
"""Keyword arguments of ``@task`` for a task whose work is MLflow I/O."""
