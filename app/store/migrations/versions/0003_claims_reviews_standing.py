"""claims (leases) on work in progress; break-glass review follow-up; once-a-day runs;
standing access found on targets

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite supports them, and batch mode would rebuild the tables.
    op.add_column("access_requests", sa.Column("claimed_by", sa.String(100), nullable=True))
    op.add_column(
        "access_requests", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("reviews", sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "reviews", sa.Column("reminders", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("reviews", sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("reviews", sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "sweep_runs",
        sa.Column("job", sa.String(50), primary_key=True),
        sa.Column("period", sa.String(50), primary_key=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_by", sa.String(100), nullable=False),
    )
    op.create_table(
        "standing_access",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("entitlement", sa.String(500), nullable=False),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_by_wardkey", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("target", "entitlement", "account"),
    )


def downgrade() -> None:
    op.drop_table("standing_access")
    op.drop_table("sweep_runs")
    for column in ("escalated_at", "reminded_at", "reminders", "requested_at"):
        op.drop_column("reviews", column)
    op.drop_column("access_requests", "claimed_until")
    op.drop_column("access_requests", "claimed_by")
