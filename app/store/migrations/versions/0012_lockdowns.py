"""lockdowns: a target whose access a security admin has pulled during an incident, refused to
every request, extension and break-glass until it is lifted (at most one in force per target)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lockdowns",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_by", sa.String(320), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("grants", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lifted_by", sa.String(320), nullable=True),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.Column("reported", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_lockdowns"),
    )
    op.create_index(
        "uq_lockdowns_in_force",
        "lockdowns",
        ["target"],
        unique=True,
        sqlite_where=sa.text("lifted_at IS NULL"),
        postgresql_where=sa.text("lifted_at IS NULL"),
    )
    with op.batch_alter_table("access_requests") as batch_op:
        batch_op.add_column(sa.Column("lockdown_id", sa.Integer(), nullable=True))
    op.create_index("ix_access_requests_lockdown_id", "access_requests", ["lockdown_id"])


def downgrade() -> None:
    op.drop_index("ix_access_requests_lockdown_id", "access_requests")
    with op.batch_alter_table("access_requests") as batch_op:
        batch_op.drop_column("lockdown_id")
    op.drop_index("uq_lockdowns_in_force", "lockdowns")
    op.drop_table("lockdowns")
