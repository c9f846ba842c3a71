"""The tracing service's tables. Only this service reads or writes them.

A span is stored whole (`body`: its JSON, sanitized) beside the columns that lists, filters and
analytics read, so that those run on indexes and aggregate in the database without opening the
JSON.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
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

ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SpanRow(Base):
    __tablename__ = "spans"
    __table_args__ = (
        UniqueConstraint("owner", "trace_id", "span_id"),
        # Lists: newest first, scoped to the owner, with the common filters.
        Index(None, "owner", "start_time", "id"),
        Index(None, "owner", "model", "start_time"),
        Index(None, "owner", "provider", "start_time"),
        Index(None, "owner", "session_id", "start_time"),
        Index(None, "owner", "status", "start_time"),
        Index(None, "owner", "is_root", "start_time"),
        # Following changes (ListSpanChanges): oldest change first, a range scan from a cursor.
        Index(None, "owner", "updated_at", "id"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, doc="Row id: the list's tiebreaker.")
    owner: Mapped[str] = mapped_column(String(255), doc="The tunelab user who sent it.")
    trace_id: Mapped[str] = mapped_column(String(64))
    span_id: Mapped[str] = mapped_column(String(64))
    parent_span_id: Mapped[str] = mapped_column(String(64))
    is_root: Mapped[bool] = mapped_column(Boolean, doc="No parent: the trace's root.")
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[int] = mapped_column(Integer, doc="SpanKind number.")
    status: Mapped[int] = mapped_column(Integer, doc="SpanStatus number.")
    model: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(64))
    error_category: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    streaming: Mapped[bool | None] = mapped_column(Boolean)
    has_warnings: Mapped[bool] = mapped_column(Boolean)
    groundedness: Mapped[float | None] = mapped_column(Float)
    eval_score: Mapped[float | None] = mapped_column(
        Float, doc="The eval service's latest overall score of the span (evaluation.eval_score)."
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime,
        doc="When the span last changed (arrived, merged, annotated), stamped inside the write "
        "transaction: the order ListSpanChanges follows.",
    )
    body: Mapped[str] = mapped_column(Text, doc="The whole span as JSON, sanitized.")


class SpanTagRow(Base):
    """One row per tag of a span: the tag filter is an indexed lookup, not a JSON scan."""

    __tablename__ = "span_tags"
    __table_args__ = (Index(None, "owner", "tag", "span_row_id"),)

    span_row_id: Mapped[int] = mapped_column(
        ID, ForeignKey("spans.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))


# The tables themselves, for Core bulk statements (the ORM's bulk paths cost far more per row).
SPANS = Base.metadata.tables[SpanRow.__tablename__]
SPAN_TAGS = Base.metadata.tables[SpanTagRow.__tablename__]
