"""outbox.sent_at: when a post of the row went out with no answer recorded yet, so a retry
looks for it in Slack (by its message metadata) before posting again

A database made by `create_all` after this column landed but before this revision already
has it: it is left as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("outbox")}
    if "sent_at" not in columns:
        op.add_column("outbox", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "sent_at")
