"""nudge.files, nudge.files_pending, nudge.deleted_at: a Slack reply with files is written
before the ack with its file references, its content fetched after it (again after a
restart); a reply deleted in Slack before the agent read it is withdrawn

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nudge") as batch:
        batch.add_column(sa.Column("files", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("files_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # An older release knows no deletions: a withdrawn nudge must not reach its agent there.
    op.execute(
        "UPDATE nudge SET consumed_at = deleted_at "
        "WHERE deleted_at IS NOT NULL AND consumed_at IS NULL"
    )
    with op.batch_alter_table("nudge") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("files_pending")
        batch.drop_column("files")
