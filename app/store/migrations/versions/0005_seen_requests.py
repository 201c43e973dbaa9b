"""seen Slack requests, shared by every app instance, to refuse replays

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_requests",
        sa.Column("signature", sa.String(100), primary_key=True),
        sa.Column("seen_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_seen_requests_seen_until", "seen_requests", ["seen_until"])


def downgrade() -> None:
    op.drop_index("ix_seen_requests_seen_until", "seen_requests")
    op.drop_table("seen_requests")
