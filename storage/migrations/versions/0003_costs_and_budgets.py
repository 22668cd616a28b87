"""costs and budgets: exact task costs (task.cost_nanos, task.unpriced_tokens) and the
per-call spend ledger (charge)

Existing tasks keep what they cost: `cost_nanos` from `cost_usd`, and one ledger row per task
that used tokens, dated when it last changed, so a daily budget counts what was spent today
before the upgrade too.

A database made by `create_all` after these models landed but before migrations did (stamped
as 0001 like any older one) already has them: whatever exists is left as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    task_columns = {c["name"] for c in inspector.get_columns("task")}
    if "cost_nanos" not in task_columns:
        # NOT NULL on existing rows needs a server default; a plain ADD COLUMN on SQLite too.
        op.add_column(
            "task", sa.Column("cost_nanos", sa.BigInteger(), nullable=False, server_default="0")
        )
        op.execute("UPDATE task SET cost_nanos = CAST(ROUND(cost_usd * 1000000000) AS BIGINT)")
    if "unpriced_tokens" not in task_columns:
        op.add_column(
            "task",
            sa.Column("unpriced_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        )
    if inspector.has_table("charge"):
        return
    op.create_table(
        "charge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_charge_at", "charge", ["at", "repo"])
    op.create_index("ix_charge_task_id", "charge", ["task_id"])
    op.execute(
        "INSERT INTO charge (task_id, repo, model, tokens_in, tokens_out, cost_nanos, at) "
        "SELECT id, repo, '(before the ledger)', tokens_in, tokens_out, cost_nanos, "
        "COALESCE(finished_at, updated_at) FROM task WHERE tokens_in + tokens_out > 0"
    )


def downgrade() -> None:
    op.drop_table("charge")
    op.drop_column("task", "unpriced_tokens")
    op.drop_column("task", "cost_nanos")
