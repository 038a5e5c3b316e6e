"""The monitor flow's history: one row per run of ``flows/monitor.py``.

``monitoring_runs`` holds what a run found over its window of the request log: the drift
share and which features drifted (null when the window had too few rows to judge), each
feature's drift figures, the live accuracy from feedback labels (null without labels),
and where the Evidently report is (an MLflow artifact URI). The app and the console read
the history from it (see :mod:`mlops.monitoring.history`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "monitoring_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
        sa.Column("drift_share", sa.Float, nullable=True),
        sa.Column("drifted_features", JSON, nullable=False),
        sa.Column("per_feature", JSON, nullable=False),
        sa.Column("live_accuracy", sa.Float, nullable=True),
        sa.Column("n_labelled", sa.Integer, nullable=False),
        sa.Column("report_uri", sa.Text, nullable=True),
        sa.Column("flow_run_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_monitoring_runs_model_created", "monitoring_runs", ["model_name", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_monitoring_runs_model_created", table_name="monitoring_runs")
    op.drop_table("monitoring_runs")
