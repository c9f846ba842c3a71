"""Judgments in the eval service's database: every query scoped to its owner."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, exists, select, tuple_, update

from services.common.db import Database
from services.common.errors import invalid_argument, not_found
from services.common.pagination import Cursor, Page, newest_first, page
from services.eval.models import CheckRow, JudgmentRow
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import judgments_pb2 as jpb


@dataclass(frozen=True)
class Stored:
    id: str
    created_at: datetime
    judgment: jpb.Judgment


def encode(message: Message) -> str:
    """A message as stored: compact JSON with the proto's field names."""
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def decode(body: str, trace_deleted: bool) -> jpb.Judgment:
    judgment = json_format.Parse(body, jpb.Judgment(), ignore_unknown_fields=True)
    judgment.trace_deleted = trace_deleted
    return judgment


class JudgmentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest(
        self, owner: str, trace_id: str, span_id: str, config_key: str
    ) -> jpb.Judgment | None:
        """The last attempt of this configuration on this span."""
        query = (
            select(JudgmentRow.body, JudgmentRow.trace_deleted)
            .where(
                JudgmentRow.owner == owner,
                JudgmentRow.trace_id == trace_id,
                JudgmentRow.span_id == span_id,
                JudgmentRow.config_key == config_key,
            )
            .order_by(JudgmentRow.attempt.desc())
            .limit(1)
        )
        async with self.db.session() as session:
            row = (await session.execute(query)).first()
        return decode(row.body, row.trace_deleted) if row else None

    async def judged(
        self,
        owner: str,
        config_key: str,
        keys: Sequence[tuple[str, str]],
        *,
        since: datetime | None = None,
    ) -> set[tuple[str, str]]:
        """Which (trace_id, span_id) of `keys` this configuration judged before (since a time,
        when given), with any outcome."""
        if not keys:
            return set()
        trace_ids = sorted({trace for trace, _ in keys})
        query = select(JudgmentRow.trace_id, JudgmentRow.span_id).where(
            JudgmentRow.owner == owner,
            JudgmentRow.config_key == config_key,
            JudgmentRow.trace_id.in_(trace_ids),
        )
        if since is not None:
            query = query.where(JudgmentRow.created_at >= since)
        async with self.db.session() as session:
            found = {(row.trace_id, row.span_id) for row in await session.execute(query)}
        return found & set(keys)

    async def add(self, owner: str, judgment: jpb.Judgment) -> None:
        """Store a new judgment and its checks. A concurrent twin (same span, configuration
        and attempt) makes this ABORTED: the caller reads the twin back."""
        created = judgment.created_at.ToDatetime(tzinfo=UTC)
        row = JudgmentRow(
            id=judgment.id,
            owner=owner,
            trace_id=judgment.trace_id,
            span_id=judgment.span_id,
            session_id=judgment.session_id,
            model=judgment.model,
            rule_id=judgment.rule_id,
            config_key=judgment.config_key,
            attempt=judgment.attempt,
            status=judgment.status,
            score=judgment.score,
            passed=judgment.passed,
            groundedness=judgment.groundedness.score
            if judgment.groundedness.HasField("score")
            else None,
            trace_deleted=False,
            annotated=False,
            created_at=created,
            body=encode(judgment),
        )
        checks = [
            CheckRow(
                judgment_id=judgment.id,
                name=result.name,
                owner=owner,
                kind=result.kind,
                model=judgment.model,
                passed=result.passed,
                score=result.score,
                error=bool(result.error),
                created_at=created,
            )
            for result in judgment.results
        ]
        async with self.db.session(write=True) as session:
            session.add(row)
            await session.flush()
            session.add_all(checks)

    async def get(self, owner: str, judgment_id: str) -> jpb.Judgment:
        async with self.db.session() as session:
            row = await session.get(JudgmentRow, judgment_id)
        if row is None or row.owner != owner:
            raise not_found("judgment", judgment_id)
        return decode(row.body, row.trace_deleted)

    async def list_judgments(
        self, owner: str, where: api.JudgmentFilter, size: int, page_token: str
    ) -> Page[Stored]:
        digest = hashlib.sha256(where.SerializeToString(deterministic=True)).hexdigest()[:16]
        scope = f"judgments:{digest}"
        after = Cursor.decode(page_token, scope)
        query = newest_first(
            select(JudgmentRow).where(*conditions(owner, where)),
            JudgmentRow.created_at,
            JudgmentRow.id,
            after,
            size,
        )
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
        found = [Stored(r.id, r.created_at, decode(r.body, r.trace_deleted)) for r in rows]
        return page(found, size, scope, lambda s: s.created_at)

    async def mark_annotated(self, judgment_ids: Sequence[str]) -> None:
        if not judgment_ids:
            return
        async with self.db.session(write=True) as session:
            await session.execute(
                update(JudgmentRow)
                .where(JudgmentRow.id.in_(list(judgment_ids)))
                .values(annotated=True)
            )

    async def unannotated(self, limit: int) -> list[tuple[str, jpb.Judgment]]:
        """Judgments whose scores have not reached their span yet, oldest first: (owner, it)."""
        query = (
            select(JudgmentRow.owner, JudgmentRow.body, JudgmentRow.trace_deleted)
            .where(JudgmentRow.annotated.is_(False), JudgmentRow.trace_deleted.is_(False))
            .order_by(JudgmentRow.created_at)
            .limit(limit)
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        return [(r.owner, decode(r.body, r.trace_deleted)) for r in rows]

    async def flag_deleted(self, owner: str, trace_ids: Sequence[str]) -> int:
        """Flag the judgments of traces the tracing service no longer has."""
        if not trace_ids:
            return 0
        async with self.db.session(write=True) as session:
            result = await session.execute(
                update(JudgmentRow)
                .where(JudgmentRow.owner == owner, JudgmentRow.trace_id.in_(list(trace_ids)))
                .values(trace_deleted=True)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def live_traces(self, after: tuple[str, str], limit: int) -> list[tuple[str, str]]:
        """(owner, trace_id) of unflagged judgments, in key order after `after`: the
        housekeeping pass walks them a batch at a time."""
        query = (
            select(JudgmentRow.owner, JudgmentRow.trace_id)
            .where(
                JudgmentRow.trace_deleted.is_(False),
                tuple_(JudgmentRow.owner, JudgmentRow.trace_id) > after,
            )
            .group_by(JudgmentRow.owner, JudgmentRow.trace_id)
            .order_by(JudgmentRow.owner, JudgmentRow.trace_id)
            .limit(limit)
        )
        async with self.db.session() as session:
            return [(r.owner, r.trace_id) for r in await session.execute(query)]


def _finite_fraction(value: float, field: str) -> float:
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise invalid_argument(f"filter.{field}", f"filter.{field} must be in [0, 1]")
    return value


def conditions(owner: str, where: api.JudgmentFilter) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions, the owner's scope first."""
    found: list[ColumnElement[bool]] = [JudgmentRow.owner == owner]
    for name in ("trace_id", "span_id", "session_id", "model", "rule_id"):
        if value := getattr(where, name):
            found.append(getattr(JudgmentRow, name) == value)
    if where.validator:
        found.append(
            exists()
            .where(
                CheckRow.judgment_id == JudgmentRow.id,
                CheckRow.owner == owner,
                CheckRow.name == where.validator,
            )
            .correlate(JudgmentRow)  # not the checks too, when the outer query reads them
        )
    if where.HasField("passed"):
        found.append(JudgmentRow.passed.is_(where.passed))
    if where.HasField("min_score"):
        found.append(JudgmentRow.score >= _finite_fraction(where.min_score, "min_score"))
    if where.HasField("max_score"):
        found.append(JudgmentRow.score <= _finite_fraction(where.max_score, "max_score"))
    if where.HasField("created_from"):
        found.append(JudgmentRow.created_at >= where.created_from.ToDatetime(tzinfo=UTC))
    if where.HasField("created_to"):
        found.append(JudgmentRow.created_at < where.created_to.ToDatetime(tzinfo=UTC))
    if where.status:
        if where.status not in jpb.JudgmentStatus.values():
            raise invalid_argument("filter.status", "filter.status is complete or error")
        found.append(JudgmentRow.status == where.status)
    return found
