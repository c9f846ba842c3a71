"""The audit log records the bytes each granted download was given and actually sent.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("download_events") as batch:
        batch.add_column(sa.Column("bytes_granted", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("bytes_sent", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("download_events") as batch:
        batch.drop_column("bytes_sent")
        batch.drop_column("bytes_granted")
