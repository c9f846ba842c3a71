"""The eval service's tables. Only this service reads or writes them.

A judgment is stored whole (`body`: the Judgment message as JSON) beside the columns its lists
and summaries filter and group on; each check of it has a row of its own (`judgment_checks`),
so that the summary by validator aggregates in the database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JudgmentRow(Base):
    __tablename__ = "judgments"
    __table_args__ = (
        # A span is judged once per configuration, unless re-run on purpose (a new attempt).
        UniqueConstraint("owner", "trace_id", "span_id", "config_key", "attempt"),
        Index(None, "owner", "created_at", "id"),
        Index(None, "owner", "trace_id", "created_at"),
        Index(None, "owner", "session_id", "created_at"),
        Index(None, "owner", "rule_id", "created_at"),
        Index(None, "owner", "model", "created_at"),
        # The housekeeping pass finds the judgments whose score has not reached the trace.
        Index(None, "annotated", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    trace_id: Mapped[str] = mapped_column(String(64))
    span_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    rule_id: Mapped[str] = mapped_column(String(40), doc="Empty for a direct evaluation.")
    config_key: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer, doc="JudgmentStatus number.")
    score: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    groundedness: Mapped[float | None] = mapped_column(Float)
    trace_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    annotated: Mapped[bool] = mapped_column(
        Boolean, doc="Its scores were written onto the span in the tracing service."
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text, doc="The Judgment message as JSON.")


class CheckRow(Base):
    """One check of a judgment (a validator, the judge, groundedness), for the summaries."""

    __tablename__ = "judgment_checks"
    __table_args__ = (Index(None, "owner", "name", "created_at"),)

    judgment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("judgments.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(255))
    passed: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    error: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RuleRow(Base):
    __tablename__ = "rules"
    __table_args__ = (Index(None, "owner", "created_at", "id"), Index(None, "enabled"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(200))
    filter: Mapped[str] = mapped_column(Text, doc="The tracing SpanFilter as JSON.")
    config: Mapped[str] = mapped_column(Text, doc="The EvalConfig as JSON.")
    config_key: Mapped[str] = mapped_column(String(64))
    sampling_rate: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean)
    cursor: Mapped[str] = mapped_column(Text, doc="Where following new spans goes on from.")
    error: Mapped[str] = mapped_column(Text, doc="Why the service paused it; empty if it did not.")
    followed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    spans_seen: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobRow(Base):
    __tablename__ = "rule_jobs"
    __table_args__ = (Index(None, "owner", "rule_id", "created_at"), Index(None, "state"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    rule_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("rules.id", ondelete="CASCADE"), doc="Deleted with its rule."
    )
    state: Mapped[int] = mapped_column(Integer, doc="JobState number.")
    start_time_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    start_time_to: Mapped[datetime] = mapped_column(UTCDateTime)
    rerun: Mapped[bool] = mapped_column(Boolean)
    page_token: Mapped[str] = mapped_column(Text, doc="The tracing list's page it goes on from.")
    spans_read: Mapped[int] = mapped_column(Integer)
    spans_judged: Mapped[int] = mapped_column(Integer)
    spans_skipped: Mapped[int] = mapped_column(Integer)
    spans_failed: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JudgeKeyRow(Base):
    __tablename__ = "judge_keys"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    last4: Mapped[str] = mapped_column(String(4))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
