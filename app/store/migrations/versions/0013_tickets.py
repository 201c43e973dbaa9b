"""tickets that exist: what the ticket system said about a request's ticket (for the approver
card and the sweep that ends access when it closes), and the notes to write on tickets,
delivered with retries

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch_op:
        batch_op.add_column(sa.Column("ticket_system", sa.String(50), nullable=True))
        batch_op.add_column(sa.Column("ticket_title", sa.String(300), nullable=True))
        batch_op.add_column(sa.Column("ticket_state", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("ticket_url", sa.String(500), nullable=True))
        batch_op.add_column(
            sa.Column("ticket_checked_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "ticket_notes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("system", sa.String(50), nullable=False),
        sa.Column("ticket", sa.String(100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_notes"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["access_requests.id"],
            name="fk_ticket_notes_request_id_access_requests",
        ),
        sa.UniqueConstraint("request_id", "event", name="uq_ticket_notes_request_event"),
    )
    op.create_index("ix_ticket_notes_due", "ticket_notes", ["delivered_at", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_ticket_notes_due", "ticket_notes")
    op.drop_table("ticket_notes")
    with op.batch_alter_table("access_requests") as batch_op:
        for column in ("ticket_checked_at", "ticket_url", "ticket_state", "ticket_title"):
            batch_op.drop_column(column)
        batch_op.drop_column("ticket_system")
