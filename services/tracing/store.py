"""The tracing service's persistence: every query scoped to its owner.

Ingest reads the stored versions of a batch's spans in one query, merges and completes them in
memory, and writes the batch back with one bulk insert and one bulk update, so that a batch of a
thousand spans costs a handful of statements, not thousands.

Every write stamps `updated_at` inside its transaction, as late as it can; readers that follow
changes (`span_changes`) rely on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    Select,
    String,
    bindparam,
    delete,
    exists,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database, insert_rows
from services.common.errors import ServiceError, not_found
from services.common.pagination import Cursor, Page, int_key
from services.tracing import prepare, spans
from services.tracing.models import SPAN_TAGS, SPANS, SpanRow, SpanTagRow
from services.tracing.prepare import Existing, Rejected
from services.tracing.prices import PriceTable
from services.tracing.workers import Preparer
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
# Where following changes starts: before every span.
_BEGINNING = (datetime(1970, 1, 1, tzinfo=UTC), 0)
_TICK = timedelta(microseconds=1)  # the finest time both databases store
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Stored:
    """A span as listed: its row id (the list's cursor) and the span itself."""

    id: str
    start_time: datetime
    span: pb.Span


@dataclass(frozen=True)
class Changes:
    """A page of changed spans, the cursor after them, and whether no settled change is left."""

    spans: list[pb.Span]
    cursor: str
    caught_up: bool


class SpanStore:
    def __init__(self, db: Database, prices: PriceTable, preparer: Preparer) -> None:
        self.db = db
        self.prices = prices
        self.preparer = preparer

    async def ingest(
        self, owner: str, batch: Sequence[pb.Span], offset: int, clock: Clock
    ) -> list[Rejected]:
        """Store a batch's spans (numbered from `offset`); returns the parts refused, with why."""
        now = clock()
        for attempt in range(MERGE_ATTEMPTS):
            try:
                return await self._ingest(owner, batch, offset, now, clock)
            except ServiceError as exc:
                # Another batch added or changed one of these spans meanwhile: merge again,
                # after a random pause so that contenders fall out of step.
                if exc.code != grpc.StatusCode.ABORTED or attempt == MERGE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_jitter.uniform(0.005, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ingest(
        self, owner: str, batch: Sequence[pb.Span], offset: int, now: datetime, clock: Clock
    ) -> list[Rejected]:
        """Read what is stored, prepare the rows with no transaction open (the CPU work would
        hold SQLite's write lock), then write in one short transaction that first checks
        nothing it read has changed since."""
        wanted = prepare.keys(batch)
        found: dict[prepare.Key, Existing] = {}
        if wanted:
            async with self.db.session() as session:
                found = {
                    (row.trace_id, row.span_id): Existing(
                        row.id, row.body, row.received_at, row.updated_at
                    )
                    for row in await session.execute(self._stored_versions(owner, wanted))
                }
        rows = await self.preparer(owner, batch, offset, found, now)
        if not rows.inserts and not rows.updates:
            return rows.rejected
        async with self.db.session(write=True) as session:
            if found:
                await _unchanged_since_read(session, found.values())
            # Stamped here, not when the request came in (before the CPU-heavy prepare step):
            # a follower of changes holds back only the last few seconds of stamps, so a stamp
            # must not lag its commit. SQLite's write lock is held from BEGIN IMMEDIATE to
            # COMMIT, so there stamp order is commit order; on PostgreSQL the gap is this short
            # write, after the row locks above are taken. Later than every stamp read, so that
            # a change always changes updated_at (what _unchanged_since_read compares), even
            # when the clock stands still or steps back.
            stamp = _later(clock(), found.values())
            if rows.inserts:
                ids = await insert_rows(
                    session,
                    SPANS,
                    (*prepare.INSERT_COLUMNS, "updated_at"),
                    [(*row, stamp) for row in rows.inserts],
                    key=("trace_id", "span_id"),
                )
                await _add_tags(session, owner, zip(ids, rows.insert_tags, strict=True))
            if rows.updates:
                for values in rows.updates:
                    values["updated_at"] = stamp
                await session.execute(
                    update(SPANS).where(SPANS.c.id == bindparam("row_id")), rows.updates
                )
                await session.execute(
                    delete(SpanTagRow).where(SpanTagRow.span_row_id.in_(list(rows.update_tags)))
                )
                await _add_tags(session, owner, rows.update_tags.items())
        return rows.rejected

    def _stored_versions(
        self, owner: str, wanted: list[prepare.Key]
    ) -> Select[int, str, str, str, datetime, datetime]:
        """The stored spans of these keys, through the (owner, trace_id, span_id) index."""
        query = select(
            SpanRow.id,
            SpanRow.trace_id,
            SpanRow.span_id,
            SpanRow.body,
            SpanRow.received_at,
            SpanRow.updated_at,
        ).where(SpanRow.owner == owner)
        if self.db.is_sqlite:
            # (trace_id, span_id) IN (VALUES ...): SQLite looks each pair up in the index.
            return query.where(tuple_(SpanRow.trace_id, SpanRow.span_id).in_(wanted))
        # PostgreSQL plans a long list of pairs badly: a thousand-way OR of index scans that
        # took 0.3 s to plan, or a scan of the owner's every span. A join with the keys as
        # arrays is a nested loop of index lookups, whatever the table's statistics say.
        keys = (
            func.unnest(
                bindparam("trace_ids", [k[0] for k in wanted], type_=ARRAY(String)),
                bindparam("span_ids", [k[1] for k in wanted], type_=ARRAY(String)),
            )
            .table_valued("trace_id", "span_id")
            .render_derived(name="wanted")
        )
        return query.join(
            keys, (SpanRow.trace_id == keys.c.trace_id) & (SpanRow.span_id == keys.c.span_id)
        )

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
        scope = f"spans:{_digest(where)}"
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
        kept = _fitting(rows[:size])
        found = [Stored(str(r.id), r.start_time, spans.parse_body(r.body)) for r in kept]
        more = len(rows) > len(kept)
        last = found[-1] if found else None
        return Page(found, Cursor(last.start_time, last.id, scope) if more and last else None)

    async def span_changes(
        self, owner: str, where: api.SpanFilter, size: int, cursor: str, settled: datetime
    ) -> Changes:
        """The owner's matching spans in the order they last changed, after `cursor`, of those
        changed no later than `settled` (the later ones may have writes of their moment still
        to commit, with earlier stamps)."""
        scope = f"span-changes:{_digest(where)}"
        after = _change_cursor(cursor, scope)
        position = tuple_(SpanRow.updated_at, SpanRow.id)
        async with self.db.session() as session:
            # The owner's last settled change, matching or not: when every match up to it fits
            # in this page, the next call starts after it (not after the last match), and does
            # not scan the same unmatched changes again.
            last = (
                await session.execute(
                    select(SpanRow.updated_at, SpanRow.id)
                    .where(SpanRow.owner == owner, SpanRow.updated_at <= settled)
                    .order_by(SpanRow.updated_at.desc(), SpanRow.id.desc())
                    .limit(1)
                )
            ).first()
            if last is None or (after is not None and (last.updated_at, last.id) <= after):
                return Changes([], _encode(after or _BEGINNING, scope), caught_up=True)
            end: tuple[datetime, int] = (last.updated_at, last.id)
            query = select(SpanRow.id, SpanRow.updated_at, SpanRow.body).where(
                *conditions(owner, where), position <= end
            )
            if after is not None:
                query = query.where(position > after)
            query = query.order_by(SpanRow.updated_at, SpanRow.id).limit(size + 1)
            rows = (await session.execute(query)).all()
        kept = _fitting(rows[:size])
        more = len(rows) > len(kept)
        if more:
            end = (kept[-1].updated_at, kept[-1].id)
        found = [spans.parse_body(r.body) for r in kept]
        return Changes(found, _encode(end, scope), caught_up=not more)

    async def find_traces(self, owner: str, trace_ids: Sequence[str]) -> list[str]:
        """Those of `trace_ids` the owner has a span of, in the order asked, each once."""
        wanted = list(dict.fromkeys(t for t in trace_ids if spans.plausible_id(t)))
        if not wanted:
            return []
        # One index probe per id (EXISTS stops at the first span), however long the trace.
        ids: BindParameter[Any]
        if self.db.is_sqlite:
            ids = bindparam("trace_ids", json.dumps(wanted))
            keys = func.json_each(ids).table_valued("value").alias("wanted")
        else:
            ids = bindparam("trace_ids", wanted, type_=ARRAY(String))
            keys = func.unnest(ids).table_valued("value").render_derived(name="wanted")
        query = select(keys.c.value).where(
            exists().where(SpanRow.owner == owner, SpanRow.trace_id == keys.c.value)
        )
        async with self.db.session() as session:
            found = set((await session.scalars(query)).all())
        return [t for t in wanted if t in found]

    async def annotate(
        self, owner: str, trace_id: str, span_id: str, evaluation: pb.Evaluation, clock: Clock
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
            now = clock()
            span = spans.received(spans.parse_body(row.body))
            span.evaluation.MergeFrom(evaluation)
            if not evaluation.HasField("evaluated_at"):
                span.evaluation.evaluated_at.FromDatetime(now)
            spans.complete(span, self.prices)
            span.received_at.FromDatetime(row.received_at)
            cols = spans.stored_form(span)
            for name, value in zip(spans.ROW_COLUMNS, cols.values, strict=True):
                setattr(row, name, value)
            # Stamped with the row locked (on SQLite, the write lock held), as ingest does.
            row.updated_at = _later(now, [row])
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


def _later(now: datetime, read: Iterable[Existing | SpanRow]) -> datetime:
    """`now`, or just after the latest of these rows' stamps when that is later."""
    return max([now, *(row.updated_at + _TICK for row in read)])


def _digest(where: api.SpanFilter) -> str:
    """The filter, hashed: a cursor is refused under another filter, and stays short whatever
    the filter holds."""
    return hashlib.sha256(where.SerializeToString(deterministic=True)).hexdigest()[:16]


def _fitting(rows: Sequence[Any]) -> list[Any]:
    """The first rows (one at least) whose bodies fit in one gRPC answer."""
    kept: list[Any] = []
    weight = 0
    for row in rows:
        weight += len(row.body)
        if kept and weight > MAX_PAGE_BYTES:
            break
        kept.append(row)
    return kept


def _change_cursor(token: str, scope: str) -> tuple[datetime, int] | None:
    """The (updated_at, id) a ListSpanChanges cursor holds; None for an empty one."""
    try:
        after = Cursor.decode(token, scope)
        if after is None:
            return None
        row_id = int_key(after)
        if not 0 <= row_id < 2**63:
            raise ValueError(row_id)
        return after.created_at.astimezone(UTC), row_id
    except (ServiceError, ValueError, OverflowError):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "cursor is not one ListSpanChanges returned for this filter: pass next_cursor back "
            "unchanged, or leave it empty to start from the first span",
            errors_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
            {"field": "cursor"},
        ) from None


def _encode(position: tuple[datetime, int], scope: str) -> str:
    return Cursor(position[0], str(position[1]), scope).encode()


async def _unchanged_since_read(session: AsyncSession, read: Collection[Existing]) -> None:
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
    rows = [(row_id, tag, owner) for row_id, tags in tagged for tag in tags]
    await insert_rows(session, SPAN_TAGS, ("span_row_id", "tag", "owner"), rows)


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
    if where.HasField("min_groundedness"):
        found.append(SpanRow.groundedness >= where.min_groundedness)
    if where.HasField("min_eval_score"):
        found.append(SpanRow.eval_score >= where.min_eval_score)
    if where.HasField("eval_score_below"):
        found.append(SpanRow.eval_score < where.eval_score_below)
    if where.roots_only:
        found.append(SpanRow.is_root.is_(True))
    return found
