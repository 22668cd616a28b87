"""slack_delivery: the key of each Slack request acted on (trigger_id or event_id) and its
answer, so a redelivered or replayed request is acted on once, whichever process takes it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slack_delivery",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("reply", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),  # UTCDateTime
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_slack_delivery_created_at", "slack_delivery", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_slack_delivery_created_at", table_name="slack_delivery")
    op.drop_table("slack_delivery")
