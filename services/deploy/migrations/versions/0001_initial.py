"""Deployments, their event log and metrics, provider API keys, the supervisor's lease.

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
        "deployments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("spec_digest", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_size", sa.BigInteger(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("hyperparameters", sa.Text(), nullable=False),
        sa.Column("gpu", sa.Text(), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("max_runtime_minutes", sa.Integer(), nullable=False),
        sa.Column("max_cost_usd", sa.Float(), nullable=False),
        sa.Column("heartbeat_timeout_minutes", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("job_token_hash", sa.String(length=64), nullable=True),
        sa.Column("job_token_ciphertext", sa.Text(), nullable=True),
        sa.Column("provider_key_ciphertext", sa.Text(), nullable=True),
        sa.Column("pod_id", sa.String(length=128), nullable=True),
        sa.Column("gpu_type", sa.String(length=128), nullable=True),
        sa.Column("hourly_usd", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("cost_base_usd", sa.Float(), nullable=False),
        sa.Column("progress", sa.Text(), nullable=False),
        sa.Column("system_info", sa.Text(), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_exit_code", sa.Integer(), nullable=True),
        sa.Column("error_log_tail", sa.Text(), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("output_blob_key", sa.String(length=32), nullable=True),
        sa.Column("output_size", sa.BigInteger(), nullable=True),
        sa.Column("output_sha256", sa.String(length=64), nullable=True),
        sa.Column("output_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("billing_started_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("last_report_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("pod_released_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint("cost_usd >= 0", name=op.f("ck_deployments_cost_not_negative")),
        sa.CheckConstraint("max_cost_usd > 0", name=op.f("ck_deployments_cost_limit_positive")),
        sa.CheckConstraint("max_runtime_minutes > 0", name=op.f("ck_deployments_runtime_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("owner", "request_id", name=op.f("uq_deployments_owner_request_id")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployments_owner_created_at_id"),
            ["owner", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_deployments_state"), ["state"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "provider_keys",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "provider", name=op.f("pk_provider_keys")),
    )
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_events_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
        sa.UniqueConstraint(
            "deployment_id", "sequence", name=op.f("uq_deployment_events_deployment_id_sequence")
        ),
    )
    op.create_table(
        "deployment_metrics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
        sa.Column("progress", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_metrics_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_metrics")),
    )
    with op.batch_alter_table("deployment_metrics", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_metrics_deployment_id_id"),
            ["deployment_id", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("deployment_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_metrics_deployment_id_id"))

    op.drop_table("deployment_metrics")
    op.drop_table("deployment_events")
    op.drop_table("provider_keys")
    op.drop_table("leases")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_state"))
        batch_op.drop_index(batch_op.f("ix_deployments_owner_created_at_id"))

    op.drop_table("deployments")
