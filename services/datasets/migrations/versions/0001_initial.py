"""Datasets, download tokens and the download audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("format_error_line", sa.BigInteger(), nullable=True),
        sa.Column("format_error_reason", sa.Text(), nullable=True),
        sa.Column("blob_key", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_datasets_size_not_negative")),
        sa.CheckConstraint("row_count >= 0", name=op.f("ck_datasets_rows_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_datasets_blob_key")),
    )
    op.create_index(
        op.f("ix_datasets_owner_created_at_id"), "datasets", ["owner", "created_at", "id"]
    )
    op.create_table(
        "download_tokens",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint("max_uses >= 1", name=op.f("ck_download_tokens_max_uses_positive")),
        sa.CheckConstraint(
            "use_count >= 0 AND use_count <= max_uses",
            name=op.f("ck_download_tokens_use_count_in_range"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_download_tokens_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_download_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_download_tokens_dataset_id_created_at_id"),
        "download_tokens",
        ["dataset_id", "created_at", "id"],
    )
    op.create_index(op.f("ix_download_tokens_expires_at"), "download_tokens", ["expires_at"])
    op.create_table(
        "download_events",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(40), nullable=True),
        sa.Column("token_fingerprint", sa.String(16), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("range", sa.String(256), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(512), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_events")),
    )
    op.create_index(
        op.f("ix_download_events_dataset_id_occurred_at_id"),
        "download_events",
        ["dataset_id", "occurred_at", "id"],
    )
    op.create_index(op.f("ix_download_events_occurred_at"), "download_events", ["occurred_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_download_events_occurred_at"), table_name="download_events")
    op.drop_index(
        op.f("ix_download_events_dataset_id_occurred_at_id"), table_name="download_events"
    )
    op.drop_table("download_events")
    op.drop_index(op.f("ix_download_tokens_expires_at"), table_name="download_tokens")
    op.drop_index(op.f("ix_download_tokens_dataset_id_created_at_id"), table_name="download_tokens")
    op.drop_table("download_tokens")
    op.drop_index(op.f("ix_datasets_owner_created_at_id"), table_name="datasets")
    op.drop_table("datasets")
