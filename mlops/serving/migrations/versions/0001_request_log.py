"""The request log: one row per prediction request, one per labelled row of a request.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "prediction_log",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("outputs", JSON, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
    )
    op.create_index("ix_prediction_log_received_at", "prediction_log", ["received_at"])
    op.create_index("ix_prediction_log_model", "prediction_log", ["model_name", "model_version"])
    op.create_table(
        "prediction_feedback",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("prediction_feedback")
    op.drop_index("ix_prediction_log_model", table_name="prediction_log")
    op.drop_index("ix_prediction_log_received_at", table_name="prediction_log")
    op.drop_table("prediction_log")
