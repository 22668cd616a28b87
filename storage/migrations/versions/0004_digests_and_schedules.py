"""digests and schedules: digest runs (sent once per target and fire time), DM subscribers,
and recurring tasks

A database made by `create_all` after these models landed but before migrations did (stamped
as 0001 like any older one) already has these tables: those are left as they are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)  # UTCDateTime


def upgrade() -> None:
    exists = sa.inspect(op.get_bind()).has_table
    if not exists("digestrun"):
        op.create_table(
            "digestrun",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("target", sa.String(), nullable=False),
            _ts("fire_at", nullable=False),
            _ts("created_at", nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("target", "fire_at", name="uq_digestrun_target_fire"),
        )
        op.create_index("ix_digestrun_target", "digestrun", ["target"])
    if not exists("digestsubscriber"):
        op.create_table(
            "digestsubscriber",
            sa.Column("user", sa.String(), nullable=False),
            _ts("created_at", nullable=False),
            sa.PrimaryKeyConstraint("user"),
        )
    if not exists("schedule"):
        op.create_table(
            "schedule",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("cron", sa.String(), nullable=False),
            sa.Column("timezone", sa.String(), nullable=False),
            sa.Column("repo", sa.String(), nullable=False),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("channel", sa.String(), nullable=True),
            sa.Column("creator", sa.String(), nullable=False),
            sa.Column("paused", sa.Boolean(), nullable=False),
            _ts("created_at", nullable=False),
            _ts("last_fired_at"),
            sa.Column("last_task_id", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )


def downgrade() -> None:
    for table in ("schedule", "digestsubscriber", "digestrun"):
        op.drop_table(table)
