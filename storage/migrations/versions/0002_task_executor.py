"""task.executor: the worker that claimed the task last, kept after it finishes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (nullable, no default): SQLite does it in place, no table copy.
    op.add_column("task", sa.Column("executor", sa.String(), nullable=True))
    # Tasks a worker holds now: the holder is known.
    op.execute("UPDATE task SET executor = worker_id WHERE worker_id IS NOT NULL")


def downgrade() -> None:
    op.drop_column("task", "executor")
