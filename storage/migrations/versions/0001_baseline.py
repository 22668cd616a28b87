"""baseline: the schema `create_all` made before migrations existed

Frozen: written out with plain SQLAlchemy types, never importing storage.models, so later
model changes cannot alter what this revision creates. A database made by that release is
stamped with this revision instead of running it (storage.migrate).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    # storage.models.UTCDateTime stores into DateTime(timezone=True).
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)  # sqlmodel's AutoString


def upgrade() -> None:
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        _str("repo", nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        # The State enum, stored by value in a plain column (native_enum=False, no CHECK).
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        _str("branch"),
        _str("requester", nullable=False),
        _str("source", nullable=False),
        _str("channel"),
        _str("thread_ts"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        _str("worker_id"),
        _ts("heartbeat_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("cancel_requested_at"),
        _str("cancel_requested_by"),
        _str("approved_by"),
        _ts("approved_at"),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        _str("base_commit"),
        _str("head_commit"),
        _str("merge_commit"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_claim", "task", ["state", "priority", "id"])
    op.create_table(
        "nudge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        _str("author", nullable=False),
        _str("source", nullable=False),
        _str("slack_ts"),
        _ts("created_at", nullable=False),
        _ts("consumed_at"),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_nudge_task_id", "nudge", ["task_id"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        _str("kind", nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("next_attempt_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("delivered_at"),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outbox_pending", "outbox", ["delivered_at", "id"])
    op.create_index("ix_outbox_task_id", "outbox", ["task_id"])
    op.create_table(
        "taskevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        _str("kind", nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_taskevent_task_id", "taskevent", ["task_id"])


def downgrade() -> None:
    for table in ("taskevent", "outbox", "nudge", "task"):
        op.drop_table(table)
