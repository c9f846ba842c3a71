"""Evaluation rules and their jobs in the eval service's database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database
from services.common.errors import not_found
from services.common.ids import new_id
from services.common.pagination import Cursor, Page, newest_first, page
from services.eval.judgment_store import encode
from services.eval.models import JobRow, JudgmentRow, RuleRow
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import jobs_pb2
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

ACTIVE = (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)


@dataclass(frozen=True)
class StoredRule:
    id: str
    owner: str
    created_at: datetime
    filter: tapi.SpanFilter
    config: jpb.EvalConfig
    config_key: str
    sampling_rate: float
    enabled: bool
    cursor: str
    message: api.Rule


@dataclass(frozen=True)
class StoredJob:
    id: str
    created_at: datetime
    row: JobRow


def _rule(row: RuleRow, judged: int = 0) -> StoredRule:
    where = json_format.Parse(row.filter, tapi.SpanFilter())
    config = json_format.Parse(row.config, jpb.EvalConfig())
    message = api.Rule(
        id=row.id,
        name=row.name,
        filter=where,
        config=config,
        sampling_rate=row.sampling_rate,
        enabled=row.enabled,
        config_key=row.config_key,
        error=row.error,
        spans_seen=row.spans_seen,
        spans_judged=judged,
    )
    message.created_at.FromDatetime(row.created_at)
    if row.followed_until is not None:
        message.followed_until.FromDatetime(row.followed_until)
    return StoredRule(
        row.id,
        row.owner,
        row.created_at,
        where,
        config,
        row.config_key,
        row.sampling_rate,
        row.enabled,
        row.cursor,
        message,
    )


def job_message(row: JobRow) -> api.RuleJob:
    job = api.RuleJob(
        id=row.id,
        rule_id=row.rule_id,
        state=jobs_pb2.JobState.ValueType(row.state),
        spans_read=row.spans_read,
        spans_judged=row.spans_judged,
        spans_skipped=row.spans_skipped,
        spans_failed=row.spans_failed,
        error=row.error,
        rerun=row.rerun,
    )
    job.start_time_to.FromDatetime(row.start_time_to)
    if row.start_time_from is not None:
        job.start_time_from.FromDatetime(row.start_time_from)
    job.created_at.FromDatetime(row.created_at)
    job.updated_at.FromDatetime(row.updated_at)
    if row.finished_at is not None:
        job.finished_at.FromDatetime(row.finished_at)
    return job


async def _judged(session: AsyncSession, owner: str, rule_ids: list[str]) -> dict[str, int]:
    """Judgments each rule made (following and its jobs), counted where they are stored: a
    counter kept beside the cursor would miss the ones made just before a crash."""
    if not rule_ids:
        return {}
    query = (
        select(JudgmentRow.rule_id, func.count())
        .where(JudgmentRow.owner == owner, JudgmentRow.rule_id.in_(rule_ids))
        .group_by(JudgmentRow.rule_id)
    )
    return {rule_id: int(n) for rule_id, n in await session.execute(query)}


class RuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        owner: str,
        name: str,
        where: tapi.SpanFilter,
        config: jpb.EvalConfig,
        config_key: str,
        sampling_rate: float,
        now: datetime,
    ) -> StoredRule:
        row = RuleRow(
            id=new_id("rule"),
            owner=owner,
            name=name,
            filter=encode(where),
            config=encode(config),
            config_key=config_key,
            sampling_rate=sampling_rate,
            enabled=True,
            cursor="",
            error="",
            followed_until=None,
            spans_seen=0,
            created_at=now,
        )
        async with self.db.session(write=True) as session:
            session.add(row)
        return _rule(row)

    async def get(self, owner: str, rule_id: str) -> StoredRule:
        async with self.db.session() as session:
            row = await session.get(RuleRow, rule_id)
            if row is None or row.owner != owner:
                raise not_found("rule", rule_id)
            judged = await _judged(session, owner, [rule_id])
        return _rule(row, judged.get(rule_id, 0))

    async def list_rules(self, owner: str, size: int, page_token: str) -> Page[StoredRule]:
        scope = "rules"
        after = Cursor.decode(page_token, scope)
        query = newest_first(
            select(RuleRow).where(RuleRow.owner == owner),
            RuleRow.created_at,
            RuleRow.id,
            after,
            size,
        )
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
            judged = await _judged(session, owner, [r.id for r in rows])
        return page(
            [_rule(r, judged.get(r.id, 0)) for r in rows], size, scope, lambda r: r.created_at
        )

    async def set_enabled(self, owner: str, rule_id: str, enabled: bool) -> StoredRule:
        async with self.db.session(write=True) as session:
            row = await session.get(RuleRow, rule_id)
            if row is None or row.owner != owner:
                raise not_found("rule", rule_id)
            row.enabled = enabled
            row.error = ""
        return _rule(row)

    async def pause(self, rule_id: str, error: str) -> None:
        """Stop following for a reason the owner must act on (shown as the rule's error)."""
        async with self.db.session(write=True) as session:
            await session.execute(
                update(RuleRow).where(RuleRow.id == rule_id).values(enabled=False, error=error)
            )

    async def delete(self, owner: str, rule_id: str) -> None:
        async with self.db.session(write=True) as session:
            result = await session.execute(
                delete(RuleRow).where(RuleRow.owner == owner, RuleRow.id == rule_id)
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise not_found("rule", rule_id)

    async def enabled(self) -> list[StoredRule]:
        """Every user's enabled rules: the follower's round."""
        query = select(RuleRow).where(RuleRow.enabled.is_(True)).order_by(RuleRow.created_at)
        async with self.db.session() as session:
            return [_rule(r) for r in (await session.scalars(query)).all()]

    async def advance(self, rule_id: str, cursor: str, seen: int, now: datetime) -> None:
        """Record how far following got (a deleted rule is left deleted)."""
        async with self.db.session(write=True) as session:
            await session.execute(
                update(RuleRow)
                .where(RuleRow.id == rule_id)
                .values(
                    cursor=cursor,
                    spans_seen=RuleRow.spans_seen + seen,
                    followed_until=now,
                )
            )

    # Jobs

    async def create_job(
        self,
        owner: str,
        rule_id: str,
        start_from: datetime | None,
        start_to: datetime,
        rerun: bool,
        now: datetime,
    ) -> api.RuleJob:
        await self.get(owner, rule_id)
        row = JobRow(
            id=new_id("job"),
            owner=owner,
            rule_id=rule_id,
            state=jobs_pb2.JOB_STATE_QUEUED,
            start_time_from=start_from,
            start_time_to=start_to,
            rerun=rerun,
            page_token="",
            spans_read=0,
            spans_judged=0,
            spans_skipped=0,
            spans_failed=0,
            error="",
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        async with self.db.session(write=True) as session:
            session.add(row)
        return job_message(row)

    async def job(self, owner: str, rule_id: str, job_id: str) -> JobRow:
        async with self.db.session() as session:
            row = await session.get(JobRow, job_id)
        if row is None or row.owner != owner or row.rule_id != rule_id:
            raise not_found("job", job_id)
        return row

    async def jobs(self, owner: str, rule_id: str, size: int, page_token: str) -> Page[StoredJob]:
        await self.get(owner, rule_id)
        scope = f"jobs:{rule_id}"
        after = Cursor.decode(page_token, scope)
        query = newest_first(
            select(JobRow).where(JobRow.owner == owner, JobRow.rule_id == rule_id),
            JobRow.created_at,
            JobRow.id,
            after,
            size,
        )
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
        found = [StoredJob(r.id, r.created_at, r) for r in rows]
        return page(found, size, scope, lambda j: j.created_at)

    async def set_job_state(
        self,
        job_id: str,
        state: jobs_pb2.JobState.ValueType,
        now: datetime,
        *,
        only_from: tuple[jobs_pb2.JobState.ValueType, ...] = (),
        error: str = "",
    ) -> JobRow | None:
        """Move a job to `state` (when it is in one of `only_from`, if given)."""
        async with self.db.session(write=True) as session:
            row = await session.get(JobRow, job_id)
            if row is None or (only_from and row.state not in only_from):
                return row
            row.state = state
            row.updated_at = now
            row.error = error
            terminal = state not in ACTIVE
            row.finished_at = now if terminal else None
            return row

    async def job_progress(
        self,
        job_id: str,
        page_token: str,
        read: int,
        judged: int,
        skipped: int,
        failed: int,
        now: datetime,
    ) -> int:
        """Record a page done; the job's state afterwards (a cancel lands between pages)."""
        async with self.db.session(write=True) as session:
            row = await session.get(JobRow, job_id)
            if row is None:
                return jobs_pb2.JOB_STATE_CANCELLED
            row.page_token = page_token
            row.spans_read += read
            row.spans_judged += judged
            row.spans_skipped += skipped
            row.spans_failed += failed
            row.updated_at = now
            return row.state

    async def active_jobs(self) -> list[JobRow]:
        query = select(JobRow).where(JobRow.state.in_(ACTIVE)).order_by(JobRow.created_at)
        async with self.db.session() as session:
            return list((await session.scalars(query)).all())
