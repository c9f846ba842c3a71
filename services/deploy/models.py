"""The deploy service's tables. Only this service reads or writes them.

Everything the supervisor needs to carry on after a restart is here: the state, the pod, when
billing started, when the pod was last heard from, and whether the pod is gone yet.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import NAMING, UTCDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        Index(None, "owner", "created_at", "id"),
        # Reconciliation walks outputs in key order; retention finds them by age.
        Index(None, "output_blob_key", unique=True),
        Index(None, "output_at"),
        UniqueConstraint("owner", "request_id"),
        CheckConstraint("max_runtime_minutes > 0", name="runtime_positive"),
        CheckConstraint("max_cost_usd > 0", name="cost_limit_positive"),
        CheckConstraint("cost_usd >= 0", name="cost_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, doc="dep_ + 26 base32 chars.")
    owner: Mapped[str] = mapped_column(String(255), doc="User id (JWT sub) who asked for it.")
    request_id: Mapped[str | None] = mapped_column(
        String(128), doc="The caller's idempotency key; a repeat returns this row."
    )
    spec_digest: Mapped[str] = mapped_column(
        String(64), doc="SHA-256 of the request: a reused key with another request is refused."
    )
    provider: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(String(40))
    dataset_sha256: Mapped[str] = mapped_column(String(64), doc="Checked by the pod.")
    dataset_size: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(8), doc="sft or dpo.")
    base_model: Mapped[str] = mapped_column(String(255))
    hyperparameters: Mapped[str] = mapped_column(Text, doc="JSON object, defaults applied.")
    gpu: Mapped[str] = mapped_column(Text, doc="JSON: the GpuSpec asked for.")
    image: Mapped[str] = mapped_column(String(512))
    max_runtime_minutes: Mapped[int] = mapped_column(Integer)
    max_cost_usd: Mapped[float] = mapped_column(Float)
    heartbeat_timeout_minutes: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True, doc="states.State value.")
    job_token_hash: Mapped[str | None] = mapped_column(
        String(64), doc="SHA-256 of the pod's job token; minted when the pod is asked for."
    )
    job_token_ciphertext: Mapped[str | None] = mapped_column(
        Text,
        doc="The job token, encrypted with the key-encryption key: a launch retried after a "
        "crash hands the pod the same token, so a pod an earlier attempt made can report.",
    )
    provider_key_ciphertext: Mapped[str | None] = mapped_column(
        Text,
        doc="The provider key the pod was rented with (encrypted): the pod is watched and "
        "terminated with it even if the owner replaces or deletes their key meanwhile. "
        "Erased once the pod is gone.",
    )
    pod_id: Mapped[str | None] = mapped_column(String(128), doc="The provider's pod id.")
    gpu_type: Mapped[str | None] = mapped_column(String(128), doc="The GPU type rented.")
    hourly_usd: Mapped[float] = mapped_column(Float, doc="The pod's price per hour, all GPUs.")
    cost_usd: Mapped[float] = mapped_column(Float, doc="Accrued, as of updated_at.")
    cost_base_usd: Mapped[float] = mapped_column(
        Float, doc="Accrued before billing_started_at (at earlier prices)."
    )
    progress: Mapped[str] = mapped_column(Text, doc="JSON: the latest Progress reported.")
    system_info: Mapped[str] = mapped_column(Text, doc="JSON: what the pod said of itself.")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_exit_code: Mapped[int | None] = mapped_column(Integer)
    error_log_tail: Mapped[str | None] = mapped_column(Text, doc="JSON list of lines.")
    event_count: Mapped[int] = mapped_column(Integer, doc="Sequence of the latest event.")
    output_blob_key: Mapped[str | None] = mapped_column(
        String(32), doc="The trained output (.tar.gz) in the output store, once sent."
    )
    output_size: Mapped[int | None] = mapped_column(BigInteger)
    output_sha256: Mapped[str | None] = mapped_column(String(64))
    output_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    billing_started_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime,
        doc="When the pod was rented, or its price last changed: cost accrues at hourly_usd "
        "from here, on top of cost_base_usd.",
    )
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, doc="Pod first running.")
    last_report_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pod_released_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime,
        doc="When the provider confirmed the pod gone; until then the supervisor keeps "
        "terminating it, whatever the state.",
    )
    billed_usd: Mapped[float | None] = mapped_column(
        Float, doc="What the provider billed for the pod, as last read (RunPod's billing)."
    )
    billed_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, doc="When the provider's billing was last looked at, whatever was found."
    )


class DeploymentEventRow(Base):
    __tablename__ = "deployment_events"
    __table_args__ = (UniqueConstraint("deployment_id", "sequence"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deployments.id", ondelete="CASCADE")
    )
    sequence: Mapped[int] = mapped_column(Integer, doc="1, 2, ... per deployment.")
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str | None] = mapped_column(String(16), doc="For state_changed: the new state.")
    message: Mapped[str] = mapped_column(Text)


class MetricRow(Base):
    __tablename__ = "deployment_metrics"
    __table_args__ = (Index(None, "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deployments.id", ondelete="CASCADE")
    )
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    progress: Mapped[str] = mapped_column(Text, doc="JSON: the Progress as reported.")


class ProviderKeyRow(Base):
    __tablename__ = "provider_keys"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text, doc="Fernet token of the API key.")
    last4: Mapped[str] = mapped_column(String(4), doc="All that is ever shown of the key.")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutputRetentionRow(Base):
    """How long a user's runs' outputs are kept, where they chose (else the operator's
    default applies)."""

    __tablename__ = "output_retention"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    days: Mapped[int] = mapped_column(Integer, doc="0: kept until deleted.")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """Which replica's supervisor may act: one at a time, so that two never launch the same
    run or race to terminate a pod."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), doc="The replica holding it.")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LogLineRow(Base):
    """One line of a pod's log, as the pod pushed it with its job token, credentials masked.
    A run keeps its newest lines only (DeploySettings.max_log_lines)."""

    __tablename__ = "deployment_log_lines"

    deployment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(
        Integer,
        primary_key=True,
        doc="The line's number in the pod's log, from 1, as the pod numbered it: a batch sent "
        "again is stored once; a gap is lines lost or dropped.",
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    text: Mapped[str] = mapped_column(Text, doc="Sanitized, at most MAX_LINE_CHARS long.")
