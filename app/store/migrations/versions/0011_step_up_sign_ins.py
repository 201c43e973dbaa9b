"""step-up sign-ins: the short-lived, single-use sign-in an approval on a step_up path waits for
(hashes of its link and state, its nonce and PKCE verifier, the approver and the request)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_up_sign_ins",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("link_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("state_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("nonce", sa.String(100), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("request_id", sa.Integer(), sa.ForeignKey("access_requests.id"), nullable=False),
        sa.Column("approver", sa.String(320), nullable=False),
        sa.Column("approver_slack_id", sa.String(32), nullable=True),
        sa.Column("approver_email", sa.String(320), nullable=True),
        sa.Column("approver_team_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(200), nullable=True),
    )
    op.create_index("ix_step_up_sign_ins_request_id", "step_up_sign_ins", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_step_up_sign_ins_request_id", table_name="step_up_sign_ins")
    op.drop_table("step_up_sign_ins")
