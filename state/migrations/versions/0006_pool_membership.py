"""The GPU pool's membership intervals, and the capacity plans kept for the dashboard.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "gpu_pool_intervals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("instance_type", sa.String(length=64), nullable=False),
        sa.Column("hourly_usd", sa.Float(), nullable=False),
        sa.Column("process", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gpu_pool_intervals_last_seen_at", "gpu_pool_intervals", ["last_seen_at"])
    op.create_table(
        "capacity_plans",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("capacity_plans")
    op.drop_index("ix_gpu_pool_intervals_last_seen_at", table_name="gpu_pool_intervals")
    op.drop_table("gpu_pool_intervals")
