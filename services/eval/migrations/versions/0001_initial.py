"""Judgments and their checks, evaluation rules and their jobs, judge keys.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
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
        "judge_keys",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name=op.f("pk_judge_keys")),
    )
    op.create_table(
        "judgments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("span_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("rule_id", sa.String(length=40), nullable=False),
        sa.Column("config_key", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("groundedness", sa.Float(), nullable=True),
        sa.Column("trace_deleted", sa.Boolean(), nullable=False),
        sa.Column("annotated", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgments")),
        sa.UniqueConstraint(
            "owner",
            "trace_id",
            "span_id",
            "config_key",
            "attempt",
            name=op.f("uq_judgments_owner_trace_id_span_id_config_key_attempt"),
        ),
    )
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_judgments_annotated_created_at"),
            ["annotated", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_judgments_owner_created_at_id"),
            ["owner", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_judgments_owner_model_created_at"),
            ["owner", "model", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_judgments_owner_rule_id_created_at"),
            ["owner", "rule_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_judgments_owner_session_id_created_at"),
            ["owner", "session_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_judgments_owner_trace_id_created_at"),
            ["owner", "trace_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "rules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("filter", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("config_key", sa.String(length=64), nullable=False),
        sa.Column("sampling_rate", sa.Float(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("followed_until", UTCDateTime(), nullable=True),
        sa.Column("spans_seen", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
    )
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rules_enabled"), ["enabled"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_rules_owner_created_at_id"), ["owner", "created_at", "id"], unique=False
        )

    op.create_table(
        "judgment_checks",
        sa.Column("judgment_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["judgment_id"],
            ["judgments.id"],
            name=op.f("fk_judgment_checks_judgment_id_judgments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("judgment_id", "name", name=op.f("pk_judgment_checks")),
    )
    with op.batch_alter_table("judgment_checks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_judgment_checks_owner_name_created_at"),
            ["owner", "name", "created_at"],
            unique=False,
        )

    op.create_table(
        "rule_jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("rule_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("start_time_from", UTCDateTime(), nullable=True),
        sa.Column("start_time_to", UTCDateTime(), nullable=False),
        sa.Column("rerun", sa.Boolean(), nullable=False),
        sa.Column("page_token", sa.Text(), nullable=False),
        sa.Column("spans_read", sa.Integer(), nullable=False),
        sa.Column("spans_judged", sa.Integer(), nullable=False),
        sa.Column("spans_skipped", sa.Integer(), nullable=False),
        sa.Column("spans_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_rule_jobs_rule_id_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_jobs")),
    )
    with op.batch_alter_table("rule_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rule_jobs_owner_rule_id_created_at"),
            ["owner", "rule_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_rule_jobs_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rule_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rule_jobs_state"))
        batch_op.drop_index(batch_op.f("ix_rule_jobs_owner_rule_id_created_at"))

    op.drop_table("rule_jobs")
    with op.batch_alter_table("judgment_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_judgment_checks_owner_name_created_at"))

    op.drop_table("judgment_checks")
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rules_owner_created_at_id"))
        batch_op.drop_index(batch_op.f("ix_rules_enabled"))

    op.drop_table("rules")
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_judgments_owner_trace_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_judgments_owner_session_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_judgments_owner_rule_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_judgments_owner_model_created_at"))
        batch_op.drop_index(batch_op.f("ix_judgments_owner_created_at_id"))
        batch_op.drop_index(batch_op.f("ix_judgments_annotated_created_at"))

    op.drop_table("judgments")
    op.drop_table("judge_keys")
