"""seen Slack requests become the inbox: each signed request is recorded, with what is needed
to act on it again, before WardKey acknowledges it; its work is claimed with a lease

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("seen_requests") as table:
        table.add_column(sa.Column("body", sa.Text(), nullable=True))
        table.add_column(sa.Column("headers", sa.Text(), nullable=True))
        # Rows from before the inbox were only remembered, never work: they count as done.
        table.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="done"))
        table.add_column(sa.Column("received_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("claimed_by", sa.String(100), nullable=True))
        table.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        table.add_column(sa.Column("outcome", sa.String(200), nullable=True))
    op.create_index("ix_seen_requests_state", "seen_requests", ["state", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_requests_state", "seen_requests")
    with op.batch_alter_table("seen_requests") as table:
        for column in (
            "outcome",
            "attempts",
            "claimed_by",
            "lease_until",
            "received_at",
            "state",
            "headers",
            "body",
        ):
            table.drop_column(column)
