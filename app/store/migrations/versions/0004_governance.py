"""governance: vendor sponsors on requests and decisions; service-account attestations and
orphan flags

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("access_requests", sa.Column("sponsor", sa.String(320), nullable=True))
    op.add_column(
        "decisions",
        sa.Column("as_sponsor", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "attestations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("identity", sa.String(100), nullable=False),
        sa.Column("owner", sa.String(320), nullable=False),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("decided_by", sa.String(320), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("overdue_reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_attestations_identity", "attestations", ["identity"])
    op.create_index(
        "uq_attestations_open",
        "attestations",
        ["identity"],
        unique=True,
        sqlite_where=sa.text("outcome IS NULL"),
        postgresql_where=sa.text("outcome IS NULL"),
    )
    op.create_table(
        "orphan_flags",
        sa.Column("identity", sa.String(100), primary_key=True),
        sa.Column("owner", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("flagged_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orphan_flags")
    op.drop_index("uq_attestations_open", "attestations")
    op.drop_index("ix_attestations_identity", "attestations")
    op.drop_table("attestations")
    op.drop_column("decisions", "as_sponsor")
    op.drop_column("access_requests", "sponsor")
