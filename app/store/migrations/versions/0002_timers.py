"""timers: the expiry the holder was warned about; how far a slow approval was escalated

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite supports it, and batch mode would rebuild the table.
    op.add_column(
        "access_requests", sa.Column("expiry_warned_for", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "access_requests",
        sa.Column("escalation_level", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("access_requests", "escalation_level")
    op.drop_column("access_requests", "expiry_warned_for")
