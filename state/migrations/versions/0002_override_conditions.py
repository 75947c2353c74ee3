"""Routing overrides get a condition (a complexity level) and an end.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("routing_overrides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("condition", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_routing_overrides_cleared", ["cleared_at"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("routing_overrides", schema=None) as batch_op:
        batch_op.drop_index("ix_routing_overrides_cleared")
        batch_op.drop_column("cleared_at")
        batch_op.drop_column("condition")
