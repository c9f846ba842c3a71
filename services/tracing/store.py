"""The tracing service's persistence: every query scoped to its owner.

Ingest reads the stored versions of a batch's spans in one query, merges and completes them in
memory, and writes the batch back with one bulk insert and one bulk update, so that a batch of a
thousand spans costs a handful of statements, not thousands.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from sqlalchemy import ColumnElement, delete, exists, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database
from services.common.errors import ServiceError, not_found
from services.common.pagination import Cursor, Page, int_key
from services.tracing import spans
from services.tracing.models import SpanRow, SpanTagRow
from services.tracing.prices import PriceTable
from tunelab.common.v1 import errors_pb2
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api

MAX_TRACE_SPANS = 10_000
# Answers stay well below the 16 MiB a gRPC message may hold.
MAX_PAGE_BYTES = 8 * 1024**2
MAX_TRACE_BYTES = 12 * 1024**2
MERGE_ATTEMPTS = 8
_jitter = random.SystemRandom()
DELETE_BATCH = 5_000


@dataclass(frozen=True)
class Rejected:
    index: int
    trace_id: str
    span_id: str
    field: str
    reason: str


@dataclass(frozen=True)
class Stored:
    """A span as listed: its row id (the list's cursor) and the span itself."""

    id: str
    start_time: datetime
    span: pb.Span


class SpanStore:
    def __init__(self, db: Database, prices: PriceTable) -> None:
        self.db = db
        self.prices = prices

    async def ingest(
        self, owner: str, parts: Sequence[tuple[int, pb.Span]], now: datetime
    ) -> list[Rejected]:
        """Store checked parts (index in the batch, span); returns the spans refused whole."""
        for attempt in range(MERGE_ATTEMPTS):
            try:
                return await self._ingest(owner, parts, now)
            except ServiceError as exc:
                # Another batch added or changed one of these spans meanwhile: merge again,
                # after a random pause so that contenders fall out of step.
                if exc.code != grpc.StatusCode.ABORTED or attempt == MERGE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_jitter.uniform(0.005, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ingest(
        self, owner: str, parts: Sequence[tuple[int, pb.Span]], now: datetime
    ) -> list[Rejected]:
        """Read what is stored, merge and complete in memory with no transaction open (the
        CPU work would hold SQLite's write lock), then write in one short transaction that
        first checks nothing it read has changed since."""
        by_key: dict[tuple[str, str], list[tuple[int, pb.Span]]] = {}
        for index, part in parts:
            by_key.setdefault((part.trace_id, part.span_id), []).append((index, part))
        keys = tuple_(SpanRow.trace_id, SpanRow.span_id).in_(list(by_key))
        async with self.db.session() as session:
            found = {
                (row.trace_id, row.span_id): row
                for row in await session.execute(
                    select(
                        SpanRow.id,
                        SpanRow.trace_id,
                        SpanRow.span_id,
                        SpanRow.body,
                        SpanRow.received_at,
                        SpanRow.updated_at,
                    ).where(SpanRow.owner == owner, keys)
                )
            }
        rejected: list[Rejected] = []
        inserts: list[dict[str, object]] = []
        insert_tags: list[list[str]] = []
        updates: list[dict[str, object]] = []
        update_tags: dict[int, list[str]] = {}
        for key, key_parts in by_key.items():
            existing = found.get(key)
            span = spans.received(spans.parse_body(existing.body)) if existing else None
            for _, part in key_parts:
                span = part if span is None else spans.merge(span, part)
            assert span is not None
            try:
                spans.check_whole(span)
            except spans.Invalid as exc:
                rejected.extend(
                    Rejected(i, key[0], key[1], exc.field, exc.reason) for i, _ in key_parts
                )
                continue
            spans.complete(span, self.prices)
            span.received_at.FromDatetime(existing.received_at if existing else now)
            cols = spans.stored_form(span)
            values = {**cols.values, "owner": owner, "updated_at": now}
            if existing is None:
                inserts.append({**values, "received_at": now})
                insert_tags.append(cols.tags)
            else:
                updates.append({**values, "id": existing.id})
                update_tags[existing.id] = cols.tags
        async with self.db.session(write=True) as session:
            if found:
                await _unchanged_since_read(session, list(found.values()))
            if inserts:
                # A plain executemany: RETURNING with the rows in order costs SQLAlchemy far
                # more than asking for the new ids of the tagged spans afterwards.
                await session.execute(insert(SpanRow), inserts)
                tagged = {
                    (row["trace_id"], row["span_id"]): tags
                    for row, tags in zip(inserts, insert_tags, strict=True)
                    if tags
                }
                if tagged:
                    new_ids = await session.execute(
                        select(SpanRow.id, SpanRow.trace_id, SpanRow.span_id).where(
                            SpanRow.owner == owner,
                            tuple_(SpanRow.trace_id, SpanRow.span_id).in_(list(tagged)),
                        )
                    )
                    await _add_tags(
                        session, owner, ((r.id, tagged[(r.trace_id, r.span_id)]) for r in new_ids)
                    )
            if updates:
                await session.execute(update(SpanRow), updates)
                await session.execute(
                    delete(SpanTagRow).where(SpanTagRow.span_row_id.in_(list(update_tags)))
                )
                await _add_tags(session, owner, update_tags.items())
        return rejected

    async def trace(self, owner: str, trace_id: str) -> list[pb.Span]:
        query = (
            select(SpanRow.body)
            .where(SpanRow.owner == owner, SpanRow.trace_id == trace_id)
            .order_by(SpanRow.start_time, SpanRow.id)
            .limit(MAX_TRACE_SPANS)
        )
        async with self.db.session() as session:
            bodies = (await session.scalars(query)).all()
        if not bodies:
            raise not_found("trace", trace_id)
        if sum(len(body) for body in bodies) > MAX_TRACE_BYTES:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"trace {trace_id} is too large to send whole; list its spans page by page "
                "(ListSpans with the trace_id filter)",
                errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
                {"field": "trace_id"},
            )
        return [spans.parse_body(body) for body in bodies]

    async def list_spans(
        self, owner: str, where: api.SpanFilter, size: int, page_token: str
    ) -> Page[Stored]:
        # The filter is part of the scope (a token is refused under another filter), hashed:
        # page tokens stay short whatever the filter holds.
        digest = hashlib.sha256(where.SerializeToString(deterministic=True)).hexdigest()[:16]
        scope = f"spans:{digest}"
        after = Cursor.decode(page_token, scope)
        query = select(SpanRow.id, SpanRow.start_time, SpanRow.body).where(
            *conditions(owner, where)
        )
        if after is not None:
            query = query.where(
                tuple_(SpanRow.start_time, SpanRow.id) < (after.created_at, int_key(after))
            )
        query = query.order_by(SpanRow.start_time.desc(), SpanRow.id.desc()).limit(size + 1)
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        # A page must fit in one gRPC answer whatever its spans weigh: cut it short by bytes.
        kept: list[Any] = []
        weight = 0
        for row in rows[:size]:
            weight += len(row.body)
            if kept and weight > MAX_PAGE_BYTES:
                break
            kept.append(row)
        found = [Stored(str(r.id), r.start_time, spans.parse_body(r.body)) for r in kept]
        more = len(rows) > len(kept)
        last = found[-1] if found else None
        return Page(found, Cursor(last.start_time, last.id, scope) if more and last else None)

    async def annotate(
        self, owner: str, trace_id: str, span_id: str, evaluation: pb.Evaluation, now: datetime
    ) -> pb.Span:
        async with self.db.session(write=True) as session:
            row = await session.scalar(
                select(SpanRow)
                .where(
                    SpanRow.owner == owner,
                    SpanRow.trace_id == trace_id,
                    SpanRow.span_id == span_id,
                )
                .with_for_update()
            )
            if row is None:
                raise not_found("span", f"{trace_id}/{span_id}")
            span = spans.received(spans.parse_body(row.body))
            span.evaluation.MergeFrom(evaluation)
            if not evaluation.HasField("evaluated_at"):
                span.evaluation.evaluated_at.FromDatetime(now)
            spans.complete(span, self.prices)
            span.received_at.FromDatetime(row.received_at)
            cols = spans.stored_form(span)
            for name, value in cols.values.items():
                setattr(row, name, value)
            row.updated_at = now
            return spans.parse_body(row.body)

    async def delete_before(self, owner: str, before: datetime) -> int:
        """Delete the owner's spans that started before `before`, a batch at a time."""
        deleted = 0
        while True:
            async with self.db.session(write=True) as session:
                ids = (
                    await session.scalars(
                        select(SpanRow.id)
                        .where(SpanRow.owner == owner, SpanRow.start_time < before)
                        .limit(DELETE_BATCH)
                    )
                ).all()
                if not ids:
                    return deleted
                await session.execute(delete(SpanTagRow).where(SpanTagRow.span_row_id.in_(ids)))
                await session.execute(delete(SpanRow).where(SpanRow.id.in_(ids)))
            deleted += len(ids)


async def _unchanged_since_read(session: AsyncSession, read: Sequence[Any]) -> None:
    """ABORTED (the batch is merged again) when a row read before the write changed since."""
    query = select(SpanRow.id, SpanRow.updated_at).where(SpanRow.id.in_([r.id for r in read]))
    current = {row_id: at for row_id, at in await session.execute(query.with_for_update())}
    if any(current.get(row.id) != row.updated_at for row in read):
        raise ServiceError(
            grpc.StatusCode.ABORTED,
            "spans of this batch changed while it was merged; retry it",
            errors_pb2.ERROR_REASON_CONFLICT,
        )


async def _add_tags(
    session: AsyncSession, owner: str, tagged: Iterable[tuple[int, list[str]]]
) -> None:
    rows = [
        {"span_row_id": row_id, "tag": tag, "owner": owner}
        for row_id, tags in tagged
        for tag in tags
    ]
    if rows:
        await session.execute(insert(SpanTagRow), rows)


def conditions(owner: str, where: api.SpanFilter) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions, the owner's scope first."""
    found: list[ColumnElement[bool]] = [SpanRow.owner == owner]
    if where.HasField("start_time_from"):
        found.append(SpanRow.start_time >= where.start_time_from.ToDatetime(tzinfo=UTC))
    if where.HasField("start_time_to"):
        found.append(SpanRow.start_time < where.start_time_to.ToDatetime(tzinfo=UTC))
    for name in ("model", "provider", "error_category", "session_id", "trace_id"):
        if value := getattr(where, name):
            found.append(getattr(SpanRow, name) == value)
    if where.status:
        found.append(SpanRow.status == where.status)
    if where.kind:
        found.append(SpanRow.kind == where.kind)
    for tag in where.tags:
        found.append(
            exists().where(
                SpanTagRow.span_row_id == SpanRow.id,
                SpanTagRow.owner == owner,
                SpanTagRow.tag == tag,
            )
        )
    if where.HasField("min_duration_ms"):
        found.append(SpanRow.duration_ms >= where.min_duration_ms)
    if where.HasField("min_cost_usd"):
        found.append(SpanRow.cost_usd >= where.min_cost_usd)
    if where.HasField("has_warnings"):
        found.append(SpanRow.has_warnings == where.has_warnings)
    if where.HasField("streaming"):
        found.append(SpanRow.streaming == where.streaming)
    if where.HasField("groundedness_below"):
        found.append(SpanRow.groundedness < where.groundedness_below)
    if where.roots_only:
        found.append(SpanRow.is_root.is_(True))
    return found
