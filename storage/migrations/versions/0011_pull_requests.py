"""task.pr_number, pr_url, pr_state, pr_head, issue_url: the pull request (or merge request)
a `pull_request` repo's task has on its forge, as the forge's API answered (the state is
"open", "closed" or "merged"; `pr_head` is the commit nightcrew last pushed to its branch),
and the issue a task was started from

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default): SQLite does them in place, no table copy.
    op.add_column("task", sa.Column("pr_number", sa.Integer(), nullable=True))
    op.add_column("task", sa.Column("pr_url", sa.String(), nullable=True))
    op.add_column("task", sa.Column("pr_state", sa.String(), nullable=True))
    op.add_column("task", sa.Column("pr_head", sa.String(), nullable=True))
    op.add_column("task", sa.Column("issue_url", sa.String(), nullable=True))


def downgrade() -> None:
    for name in ("issue_url", "pr_head", "pr_state", "pr_url", "pr_number"):
        op.drop_column("task", name)
