"""task.approved_commit, task.landing_commit: the commit a person approved, and the commit
nightcrew is about to put on the base (written before any ref moves), so a merge is
decided and resumed from the database, never from text in the repository

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default): SQLite does them in place, no table copy.
    op.add_column("task", sa.Column("approved_commit", sa.String(), nullable=True))
    op.add_column("task", sa.Column("landing_commit", sa.String(), nullable=True))
    # Merges approved before this release: what was approved is the head they recorded.
    op.execute("UPDATE task SET approved_commit = head_commit WHERE state = 'merging'")


def downgrade() -> None:
    op.drop_column("task", "landing_commit")
    op.drop_column("task", "approved_commit")
