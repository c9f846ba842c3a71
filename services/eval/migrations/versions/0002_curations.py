"""Curations: the jobs that make datasets from judged spans, their candidates while they run,
and the provenance of each row they wrote.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "curations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("page_token", sa.Text(), nullable=False),
        sa.Column("collected", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.Text(), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("eval_dataset_id", sa.String(length=40), nullable=False),
        sa.Column("sample", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_curations")),
    )
    with op.batch_alter_table("curations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_curations_owner_created_at_id"), ["owner", "created_at", "id"]
        )
        batch_op.create_index(batch_op.f("ix_curations_state"), ["state"])
        batch_op.create_index(batch_op.f("ix_curations_owner_dataset_id"), ["owner", "dataset_id"])
        batch_op.create_index(
            batch_op.f("ix_curations_owner_eval_dataset_id"), ["owner", "eval_dataset_id"]
        )
    op.create_table(
        "curation_candidates",
        sa.Column("curation_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("input_key", sa.String(length=64), nullable=False),
        sa.Column("session_key", sa.String(length=255), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("meets", sa.Boolean(), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("span_id", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["curation_id"],
            ["curations.id"],
            name=op.f("fk_curation_candidates_curation_id_curations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("curation_id", "seq", name=op.f("pk_curation_candidates")),
    )
    with op.batch_alter_table("curation_candidates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_curation_candidates_curation_id_input_key"),
            ["curation_id", "input_key"],
        )
    op.create_table(
        "curation_rows",
        sa.Column("curation_id", sa.String(length=40), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("span_id", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("rejected_trace_id", sa.String(length=64), nullable=False),
        sa.Column("rejected_span_id", sa.String(length=64), nullable=False),
        sa.Column("rejected_score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["curation_id"],
            ["curations.id"],
            name=op.f("fk_curation_rows_curation_id_curations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("curation_id", "holdout", "line", name=op.f("pk_curation_rows")),
    )


def downgrade() -> None:
    op.drop_table("curation_rows")
    with op.batch_alter_table("curation_candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_curation_candidates_curation_id_input_key"))
    op.drop_table("curation_candidates")
    with op.batch_alter_table("curations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_curations_owner_eval_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_curations_owner_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_curations_state"))
        batch_op.drop_index(batch_op.f("ix_curations_owner_created_at_id"))
    op.drop_table("curations")
