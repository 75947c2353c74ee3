"""A ledger column marking requests whose budget hold was refused.

A refused request (402) is a row with status ``refused``; a request a budget
sent elsewhere (to the GPU pool, to a cheaper model) keeps its status and is
marked here, so the reports count every budget refusal.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("budget_refused", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("budget_refused")
