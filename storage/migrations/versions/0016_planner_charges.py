"""charge.plan_id, charge.task_id nullable: the planner's model calls are charged to the
spend ledger too (a plan's, or, for a planner run that made no plan, the repo's alone), so
daily budgets and the digest count them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("charge") as batch:
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("plan_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_charge_plan_id_plan", "plan", ["plan_id"], ["id"])
        batch.create_index("ix_charge_plan_id", ["plan_id"])


def downgrade() -> None:
    op.execute("DELETE FROM charge WHERE task_id IS NULL")
    with op.batch_alter_table("charge") as batch:
        batch.drop_index("ix_charge_plan_id")
        batch.drop_constraint("fk_charge_plan_id_plan", type_="foreignkey")
        batch.drop_column("plan_id")
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=False)
