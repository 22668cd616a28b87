"""nudge (task_id, slack_ts) unique: one nudge per Slack reply, even when HTTP workers in
several processes take two deliveries of the same reply at once

Duplicates an older release let through (the same reply stored twice) are removed first,
keeping the earliest; nudges typed in the terminal (no slack_ts) are never duplicates.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM nudge WHERE slack_ts IS NOT NULL AND id NOT IN ("
        " SELECT min(id) FROM nudge WHERE slack_ts IS NOT NULL GROUP BY task_id, slack_ts)"
    )
    op.create_index("uq_nudge_task_slack_ts", "nudge", ["task_id", "slack_ts"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_nudge_task_slack_ts", table_name="nudge")
