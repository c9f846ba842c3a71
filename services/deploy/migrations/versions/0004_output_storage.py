"""Outputs in any blob store: indexes for reconciliation and retention, and per-user retention.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as table:
        table.create_index("ix_deployments_output_blob_key", ["output_blob_key"], unique=True)
        table.create_index("ix_deployments_output_at", ["output_at"], unique=False)
    op.create_table(
        "output_retention",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_output_retention")),
    )


def downgrade() -> None:
    op.drop_table("output_retention")
    with op.batch_alter_table("deployments") as table:
        table.drop_index("ix_deployments_output_at")
        table.drop_index("ix_deployments_output_blob_key")
