"""why a request ended, as a word WardKey acts on (withdrawn by its requester, replaced by
their break-glass, a service account retired, a contract ended…), beside the reason in words

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch_op:
        batch_op.add_column(sa.Column("end_cause", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch_op:
        batch_op.drop_column("end_cause")
