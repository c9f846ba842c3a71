"""Spans and their tags.

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
        "spans",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("span_id", sa.String(length=64), nullable=False),
        sa.Column("parent_span_id", sa.String(length=64), nullable=False),
        sa.Column("is_root", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("error_category", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("streaming", sa.Boolean(), nullable=True),
        sa.Column("has_warnings", sa.Boolean(), nullable=False),
        sa.Column("groundedness", sa.Float(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spans")),
        sa.UniqueConstraint(
            "owner", "trace_id", "span_id", name=op.f("uq_spans_owner_trace_id_span_id")
        ),
    )
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_spans_owner_is_root_start_time"),
            ["owner", "is_root", "start_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_spans_owner_model_start_time"),
            ["owner", "model", "start_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_spans_owner_provider_start_time"),
            ["owner", "provider", "start_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_spans_owner_session_id_start_time"),
            ["owner", "session_id", "start_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_spans_owner_start_time_id"), ["owner", "start_time", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_spans_owner_status_start_time"),
            ["owner", "status", "start_time"],
            unique=False,
        )

    op.create_table(
        "span_tags",
        sa.Column(
            "span_row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["span_row_id"],
            ["spans.id"],
            name=op.f("fk_span_tags_span_row_id_spans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("span_row_id", "tag", name=op.f("pk_span_tags")),
    )
    with op.batch_alter_table("span_tags", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_span_tags_owner_tag_span_row_id"),
            ["owner", "tag", "span_row_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("span_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_span_tags_owner_tag_span_row_id"))

    op.drop_table("span_tags")
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spans_owner_status_start_time"))
        batch_op.drop_index(batch_op.f("ix_spans_owner_start_time_id"))
        batch_op.drop_index(batch_op.f("ix_spans_owner_session_id_start_time"))
        batch_op.drop_index(batch_op.f("ix_spans_owner_provider_start_time"))
        batch_op.drop_index(batch_op.f("ix_spans_owner_model_start_time"))
        batch_op.drop_index(batch_op.f("ix_spans_owner_is_root_start_time"))

    op.drop_table("spans")
