"""The datasets service's tables. Only this service reads or writes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import NAMING, UTCDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        Index(None, "owner", "created_at", "id"),
        CheckConstraint("size_bytes >= 0", name="size_not_negative"),
        CheckConstraint("row_count >= 0", name="rows_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, doc="ds_ + 26 base32 chars.")
    owner: Mapped[str] = mapped_column(String(255), doc="User id (JWT sub) of the uploader.")
    name: Mapped[str] = mapped_column(String(255), doc="Display name; never a storage path.")
    size_bytes: Mapped[int] = mapped_column(BigInteger, doc="Bytes stored.")
    sha256: Mapped[str] = mapped_column(String(64), doc="Hex SHA-256 of the bytes stored.")
    row_count: Mapped[int] = mapped_column(BigInteger, doc="Non-blank lines.")
    format: Mapped[str] = mapped_column(
        String(16), doc="sft_chat, dpo_preference, text or invalid (formats.Format)."
    )
    format_error_line: Mapped[int | None] = mapped_column(
        BigInteger, doc="First bad line (1-based; 0 = the whole file) when invalid."
    )
    format_error_reason: Mapped[str | None] = mapped_column(Text, doc="Why it is invalid.")
    blob_key: Mapped[str] = mapped_column(
        String(32), unique=True, doc="Key in the blob store, chosen by the service."
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, doc="Upload completed (UTC).")


class DownloadTokenRow(Base):
    __tablename__ = "download_tokens"
    __table_args__ = (
        Index(None, "dataset_id", "created_at", "id"),
        CheckConstraint("max_uses >= 1", name="max_uses_positive"),
        CheckConstraint("use_count >= 0 AND use_count <= max_uses", name="use_count_in_range"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, doc="dt_ + 26 base32 chars.")
    dataset_id: Mapped[str] = mapped_column(
        String(40),
        ForeignKey("datasets.id", ondelete="CASCADE"),
        doc="The one dataset this token downloads.",
    )
    owner: Mapped[str] = mapped_column(String(255), doc="User who minted it (the dataset owner).")
    token_hash: Mapped[str] = mapped_column(
        String(64), unique=True, doc="Hex SHA-256 of the token; the token itself is never stored."
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, doc="Purged after.")
    max_uses: Mapped[int] = mapped_column(Integer, doc="Downloads allowed in all.")
    use_count: Mapped[int] = mapped_column(
        Integer, doc="Downloads granted, less those that sent nothing."
    )
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, doc="Set on revocation.")


class DownloadEventRow(Base):
    """The audit log. No foreign keys: records outlive the tokens and datasets they mention."""

    __tablename__ = "download_events"
    __table_args__ = (Index(None, "dataset_id", "occurred_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, doc="de_ + 26 base32 chars.")
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(16), doc="granted, checked or refused.")
    reason: Mapped[str] = mapped_column(String(64), doc="ErrorReason name when refused.")
    token_id: Mapped[str | None] = mapped_column(String(40), doc="The token, when known.")
    token_fingerprint: Mapped[str] = mapped_column(
        String(16),
        doc="First 16 hex of the presented token's hash: ties repeated attempts "
        "with an unknown token together without storing it.",
    )
    dataset_id: Mapped[str | None] = mapped_column(String(40))
    owner: Mapped[str | None] = mapped_column(String(255), doc="Dataset owner, when known.")
    range: Mapped[str] = mapped_column(String(256), doc="Range header as sent (truncated).")
    client_ip: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(512), doc="Truncated.")
    request_id: Mapped[str] = mapped_column(String(128))
    bytes_granted: Mapped[int | None] = mapped_column(BigInteger, doc="Granted GETs: the length.")
    bytes_sent: Mapped[int | None] = mapped_column(
        BigInteger, doc="Granted GETs: bytes delivered, once the transfer ended."
    )
