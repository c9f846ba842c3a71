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


class CurationRow(Base):
    """A curation job: what it reads (the request), where it stands, and what it made."""

    __tablename__ = "curations"
    __table_args__ = (
        Index(None, "owner", "created_at", "id"),
        Index(None, "state"),
        Index(None, "owner", "dataset_id"),
        Index(None, "owner", "eval_dataset_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer, doc="JobState number.")
    format: Mapped[int] = mapped_column(Integer, doc="CurationFormat number.")
    dry_run: Mapped[bool] = mapped_column(Boolean)
    name: Mapped[str] = mapped_column(String(255))
    request: Mapped[str] = mapped_column(
        Text, doc="The CreateCurationRequest as JSON: filter, conditions, options."
    )
    page_token: Mapped[str] = mapped_column(
        Text, doc="The tracing list's page that collecting goes on from."
    )
    collected: Mapped[bool] = mapped_column(
        Boolean, doc="Every span has been read; what is left is writing the rows."
    )
    progress: Mapped[str] = mapped_column(Text, doc="The CurationProgress as JSON.")
    dataset_id: Mapped[str] = mapped_column(String(40))
    eval_dataset_id: Mapped[str] = mapped_column(String(40))
    sample: Mapped[str] = mapped_column(Text, doc="A dry run's sample rows as a JSON list.")
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CandidateRow(Base):
    """A judged span a curation may make a row of, held while the job runs (deleted when it
    ends): grouping by input and capping per session happen in the database, not in memory."""

    __tablename__ = "curation_candidates"
    __table_args__ = (Index(None, "curation_id", "input_key"),)

    curation_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("curations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, doc="Order of reading.")
    input_key: Mapped[str] = mapped_column(String(64), doc="sha256 of the normalised input.")
    session_key: Mapped[str] = mapped_column(
        String(255), doc="The span's session, else its own trace and span: a session of one."
    )
    score: Mapped[float] = mapped_column(Float)
    meets: Mapped[bool] = mapped_column(Boolean, doc="It met the conditions.")
    holdout: Mapped[bool] = mapped_column(Boolean, doc="Its input goes to the evaluation split.")
    trace_id: Mapped[str] = mapped_column(String(64))
    span_id: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text, doc="The input turns as JSON.")
    answer: Mapped[str] = mapped_column(Text, doc="The output turn as JSON.")


class ProvenanceRow(Base):
    """Where one row of a curated dataset came from."""

    __tablename__ = "curation_rows"

    curation_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("curations.id", ondelete="CASCADE"), primary_key=True
    )
    holdout: Mapped[bool] = mapped_column(
        Boolean, primary_key=True, doc="A row of the evaluation dataset."
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True, doc="From 1.")
    trace_id: Mapped[str] = mapped_column(String(64))
    span_id: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    rejected_trace_id: Mapped[str] = mapped_column(String(64))
    rejected_span_id: Mapped[str] = mapped_column(String(64))
    rejected_score: Mapped[float | None] = mapped_column(Float)
