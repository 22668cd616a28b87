"""plans and dependencies: `plan`, `task_dependency`, `task_exclusion`, `task.plan_id`,
`task.allowed_paths` (the `waiting` state needs no schema: states are plain strings)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("proposal", sa.JSON(), nullable=False),
        sa.Column("requester", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("thread_ts", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("feedback", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Plain ADD COLUMN, no foreign key: SQLite adds one only by rebuilding `task`, which it
    # cannot drop while other rows point at it. Plans are never deleted, so nothing dangles.
    op.add_column("task", sa.Column("plan_id", sa.Integer(), nullable=True))
    op.add_column("task", sa.Column("allowed_paths", sa.JSON(), nullable=True))
    op.create_index("ix_task_plan_id", "task", ["plan_id"])
    op.create_table(
        "task_dependency",
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("task.id"), nullable=False),
        sa.Column("prerequisite_id", sa.Integer(), sa.ForeignKey("task.id"), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "prerequisite_id"),
    )
    op.create_index("ix_task_dependency_prerequisite_id", "task_dependency", ["prerequisite_id"])
    op.create_table(
        "task_exclusion",
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("task.id"), nullable=False),
        sa.Column("other_id", sa.Integer(), sa.ForeignKey("task.id"), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "other_id"),
    )


def downgrade() -> None:
    op.drop_table("task_exclusion")
    op.drop_index("ix_task_dependency_prerequisite_id", table_name="task_dependency")
    op.drop_table("task_dependency")
    op.drop_index("ix_task_plan_id", table_name="task")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("allowed_paths")
        batch.drop_column("plan_id")
    op.drop_table("plan")
