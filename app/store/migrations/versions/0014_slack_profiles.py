"""slack_profiles: the last answer Slack gave for each person who used WardKey (who they are,
whether they may act), so a click or command is still done while Slack's Web API fails

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slack_profiles",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_slack_profiles"),
    )


def downgrade() -> None:
    op.drop_table("slack_profiles")
