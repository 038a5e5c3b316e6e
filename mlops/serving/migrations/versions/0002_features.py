"""The feature matrix each prediction was computed from (entity lookups included).

``features``: float32 little-endian, row-major ``[n_rows, n_features]`` in the order of
the model version's ``feature_names`` tag; null for rows logged before this revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("prediction_log", sa.Column("features", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("prediction_log", "features")
