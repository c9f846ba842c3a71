"""Spans' eval_score column, and the (owner, updated_at, id) index that ListSpanChanges follows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # No backfill: no span stored before this revision carries an eval_score.
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eval_score", sa.Float(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_spans_owner_updated_at_id"), ["owner", "updated_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spans_owner_updated_at_id"))
    # Not in batch mode: on SQLite that copies the table, and dropping the old copy deletes
    # every span's tags (ON DELETE CASCADE; foreign keys cannot be turned off inside the
    # migration's transaction). SQLite has ALTER TABLE ... DROP COLUMN since 3.35.
    op.drop_column("spans", "eval_score")
