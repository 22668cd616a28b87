"""task.model_wait_since, task.model_wait: a running task waiting for a failing model
endpoint (an outage), since when, and what fails and until when it keeps trying; shown on
the card, in `nightcrew ls` and `show`

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default): SQLite does them in place, no table copy.
    op.add_column("task", sa.Column("model_wait_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("task", sa.Column("model_wait", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("model_wait")
        batch.drop_column("model_wait_since")
