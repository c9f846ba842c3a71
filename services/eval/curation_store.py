"""Curations in the eval service's database: the jobs, their candidates while they run, and the
provenance of the rows they wrote. Every query a caller reaches is scoped to its owner.

Grouping by input (dedupe, DPO pairs) and capping per session are window functions over the
candidates, streamed in reading order: memory stays flat however many spans a curation reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from google.protobuf import json_format
from sqlalchemy import Select, and_, delete, func, or_, select, update

from services.common.db import Database, insert_rows
from services.common.errors import not_found
from services.common.ids import new_id
from services.common.pagination import Cursor, Page, newest_first, oldest_first, page
from services.eval.judgment_store import encode
from services.eval.models import Base, CandidateRow, CurationRow, ProvenanceRow
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.eval.v1 import jobs_pb2

ACTIVE = (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
# Scores are means of floats: a pair that differs by the margin exactly must count as one.
_EPSILON = 1e-9


class Candidate(NamedTuple):
    seq: int
    input_key: str
    session_key: str
    score: float
    meets: bool
    holdout: bool
    trace_id: str
    span_id: str
    prompt: str
    answer: str


CANDIDATES = Base.metadata.tables[CandidateRow.__tablename__]
PROVENANCE = Base.metadata.tables[ProvenanceRow.__tablename__]
# The columns add_provenance fills: the curation's id, then what each row gives, in order.
PROVENANCE_FIELDS = [column.name for column in PROVENANCE.c]


@dataclass(frozen=True)
class Selected:
    """A row to write: its candidate (the chosen one, for DPO) and, for DPO, the rejected."""

    chosen: Candidate
    rejected: Candidate | None = None


@dataclass(frozen=True)
class StoredCuration:
    id: str
    created_at: datetime
    row: CurationRow


def request_of(row: CurationRow) -> cpb.CreateCurationRequest:
    return json_format.Parse(row.request, cpb.CreateCurationRequest())


def progress_of(row: CurationRow) -> cpb.CurationProgress:
    return json_format.Parse(row.progress, cpb.CurationProgress())


def curation_message(row: CurationRow) -> cpb.Curation:
    request = request_of(row)
    message = cpb.Curation(
        id=row.id,
        state=jobs_pb2.JobState.ValueType(row.state),
        format=request.format,
        filter=request.filter,
        conditions=request.conditions,
        options=request.options,
        name=row.name,
        dry_run=row.dry_run,
        progress=progress_of(row),
        dataset_id=row.dataset_id,
        eval_dataset_id=row.eval_dataset_id,
        error=row.error,
    )
    for sample in json.loads(row.sample or "[]"):
        message.sample.add().update(sample)
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    if row.finished_at is not None:
        message.finished_at.FromDatetime(row.finished_at)
    return message


def _candidate(row: Any) -> Candidate:
    return Candidate(
        row.seq,
        row.input_key,
        row.session_key,
        row.score,
        row.meets,
        row.holdout,
        row.trace_id,
        row.span_id,
        row.prompt,
        row.answer,
    )


def _ranked(query: Select[Any], partition: Any, *order: Any) -> Any:
    """The query's rows with `rank`: their place within their partition (from 1)."""
    rank = func.row_number().over(partition_by=partition, order_by=order)
    return query.add_columns(rank.label("rank")).subquery()


class CurationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # The jobs

    async def create(
        self, owner: str, request: cpb.CreateCurationRequest, name: str, now: datetime
    ) -> CurationRow:
        row = CurationRow(
            id=new_id("cur"),
            owner=owner,
            state=jobs_pb2.JOB_STATE_QUEUED,
            format=request.format,
            dry_run=request.dry_run,
            name=name,
            request=encode(request),
            page_token="",
            collected=False,
            progress=encode(cpb.CurationProgress()),
            dataset_id="",
            eval_dataset_id="",
            sample="[]",
            error="",
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        async with self.db.session(write=True) as session:
            session.add(row)
        return row

    async def get(self, owner: str, curation_id: str) -> CurationRow:
        async with self.db.session() as session:
            row = await session.get(CurationRow, curation_id)
        if row is None or row.owner != owner:
            raise not_found("curation", curation_id)
        return row

    async def list_curations(self, owner: str, size: int, page_token: str) -> Page[StoredCuration]:
        after = Cursor.decode(page_token, "curations")
        query = newest_first(
            select(CurationRow).where(CurationRow.owner == owner),
            CurationRow.created_at,
            CurationRow.id,
            after,
            size,
        )
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
        found = [StoredCuration(r.id, r.created_at, r) for r in rows]
        return page(found, size, "curations", lambda c: c.created_at)

    async def active(self) -> list[CurationRow]:
        query = (
            select(CurationRow)
            .where(CurationRow.state.in_(ACTIVE))
            .order_by(CurationRow.created_at, CurationRow.id)
        )
        async with self.db.session() as session:
            return list((await session.scalars(query)).all())

    async def state(self, curation_id: str) -> int:
        """The job's state now (CANCELLED when it is gone)."""
        async with self.db.session() as session:
            state = await session.scalar(
                select(CurationRow.state).where(CurationRow.id == curation_id)
            )
        return jobs_pb2.JOB_STATE_CANCELLED if state is None else state

    async def start(self, curation_id: str, now: datetime) -> CurationRow | None:
        """Mark a queued or running job running; None when it is no longer active."""
        async with self.db.session(write=True) as session:
            row = await session.get(CurationRow, curation_id)
            if row is None or row.state not in ACTIVE:
                return None
            row.state = jobs_pb2.JOB_STATE_RUNNING
            row.updated_at = now
            return row

    async def collected_page(
        self,
        curation_id: str,
        candidates: Sequence[Candidate],
        page_token: str,
        progress: cpb.CurationProgress,
        now: datetime,
        *,
        last: bool,
    ) -> int:
        """Store a page's candidates with the page token and counts after it, in one
        transaction (a restart goes on from the page after); the state afterwards. The job's
        row is locked first, so a cancel either comes before (nothing is stored) or after (and
        drops what was)."""
        async with self.db.session(write=True) as session:
            row = await session.get(CurationRow, curation_id, with_for_update=True)
            if row is None or row.state != jobs_pb2.JOB_STATE_RUNNING:
                return jobs_pb2.JOB_STATE_CANCELLED if row is None else row.state
            if candidates:
                await insert_rows(
                    session,
                    CANDIDATES,
                    ["curation_id", *Candidate._fields],
                    [(curation_id, *c) for c in candidates],
                )
            row.page_token = page_token
            row.collected = last
            row.progress = encode(progress)
            row.updated_at = now
            return row.state

    async def finish(
        self,
        curation_id: str,
        state: jobs_pb2.JobState.ValueType,
        now: datetime,
        *,
        progress: cpb.CurationProgress | None = None,
        dataset_ids: tuple[str, str] = ("", ""),
        sample: Sequence[dict[str, Any]] = (),
        error: str = "",
    ) -> bool:
        """End a running job and drop its candidates; False when it had ended already (a
        cancel came first): nothing is changed then but the candidates."""
        async with self.db.session(write=True) as session:
            ended = await session.execute(
                update(CurationRow)
                .where(CurationRow.id == curation_id, CurationRow.state.in_(ACTIVE))
                .values(
                    state=state,
                    updated_at=now,
                    finished_at=now,
                    error=error,
                    dataset_id=dataset_ids[0],
                    eval_dataset_id=dataset_ids[1],
                    sample=json.dumps(list(sample)),
                    **({"progress": encode(progress)} if progress is not None else {}),
                )
            )
            await session.execute(
                delete(CandidateRow).where(CandidateRow.curation_id == curation_id)
            )
            kept = bool(ended.rowcount)  # type: ignore[attr-defined]
            # A job that ended some other way keeps no rows; one that ended already (a cancel
            # and the job's own finish crossing) is left as it ended.
            succeeded = state == jobs_pb2.JOB_STATE_SUCCEEDED
            if kept != succeeded:
                await session.execute(
                    delete(ProvenanceRow).where(ProvenanceRow.curation_id == curation_id)
                )
            return kept

    async def cancel(self, owner: str, curation_id: str, now: datetime) -> CurationRow:
        row = await self.get(owner, curation_id)
        if row.state in ACTIVE:
            await self.finish(row.id, jobs_pb2.JOB_STATE_CANCELLED, now)
        return await self.get(owner, curation_id)

    async def restart_writing(self, curation_id: str) -> None:
        """A job that stopped while writing writes again from its first row."""
        async with self.db.session(write=True) as session:
            await session.execute(
                delete(ProvenanceRow).where(ProvenanceRow.curation_id == curation_id)
            )

    # Choosing the rows

    def _candidates(self, curation_id: str, holdout: bool) -> Any:
        c = CandidateRow
        return select(c.seq, c.input_key, c.session_key, c.score).where(
            c.curation_id == curation_id, c.holdout == holdout
        )

    def _sft(self, curation_id: str, holdout: bool, dedupe: bool, cap: int) -> tuple[Any, Any]:
        """(after dedupe, after the cap) as subqueries of seq, input_key, session_key, score."""
        c = CandidateRow
        chosen: Any = self._candidates(curation_id, holdout).where(c.meets).subquery()
        if dedupe:
            ranked = _ranked(
                select(chosen), chosen.c.input_key, chosen.c.score.desc(), chosen.c.seq
            )
            chosen = select(*_plain(ranked)).where(ranked.c.rank == 1).subquery()
        capped = chosen
        if cap:
            ranked = _ranked(
                select(chosen), chosen.c.session_key, chosen.c.score.desc(), chosen.c.seq
            )
            capped = select(*_plain(ranked)).where(ranked.c.rank <= cap).subquery()
        return chosen, capped

    def _dpo(self, curation_id: str, holdout: bool, margin: float, cap: int) -> tuple[Any, Any]:
        """(the pairs, after the cap) as subqueries of chosen_seq, rejected_seq. One pass of
        window functions over the candidates (no join of a group's rows with each other): per
        input, the best answer that met the conditions and the worst answer of all."""
        c = CandidateRow
        best: dict[str, Any] = {
            "partition_by": c.input_key,
            "order_by": (c.meets.desc(), c.score.desc(), c.seq),
        }
        worst: dict[str, Any] = {
            "partition_by": c.input_key,
            "order_by": (c.score.asc(), c.seq.desc()),
        }
        groups = (
            self._candidates(curation_id, holdout)
            .with_only_columns(
                func.row_number().over(partition_by=c.input_key, order_by=c.seq).label("rank"),
                func.first_value(c.seq).over(**best).label("chosen_seq"),
                func.first_value(c.meets).over(**best).label("chosen_meets"),
                func.first_value(c.score).over(**best).label("score"),
                func.first_value(c.session_key).over(**best).label("session_key"),
                func.first_value(c.seq).over(**worst).label("rejected_seq"),
                func.first_value(c.score).over(**worst).label("rejected_score"),
            )
            .subquery()
        )
        pairs = (
            select(groups.c.chosen_seq, groups.c.rejected_seq, groups.c.session_key, groups.c.score)
            .where(
                groups.c.rank == 1,
                groups.c.chosen_meets,
                groups.c.score - groups.c.rejected_score >= margin - _EPSILON,
            )
            .subquery()
        )
        capped = pairs
        if cap:
            ranked = _ranked(
                select(pairs), pairs.c.session_key, pairs.c.score.desc(), pairs.c.chosen_seq
            )
            capped = (
                select(ranked.c.chosen_seq, ranked.c.rejected_seq)
                .where(ranked.c.rank <= cap)
                .subquery()
            )
        return pairs, capped

    async def _count(self, subquery: Any) -> int:
        async with self.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(subquery)) or 0)

    async def sft_counts(
        self, curation_id: str, holdout: bool, dedupe: bool, cap: int
    ) -> tuple[int, int, int]:
        """(candidates that met the conditions, after dedupe, after the cap)."""
        c = CandidateRow
        matched = self._candidates(curation_id, holdout).where(c.meets).subquery()
        deduped, capped = self._sft(curation_id, holdout, dedupe, cap)
        return await self._count(matched), await self._count(deduped), await self._count(capped)

    async def dpo_counts(
        self, curation_id: str, holdout: bool, margin: float, cap: int
    ) -> tuple[int, int, int]:
        """(inputs with an answer that met the conditions, pairs, pairs after the cap)."""
        c = CandidateRow
        inputs = (
            select(c.input_key)
            .where(c.curation_id == curation_id, c.holdout == holdout, c.meets)
            .distinct()
            .subquery()
        )
        pairs, capped = self._dpo(curation_id, holdout, margin, cap)
        return await self._count(inputs), await self._count(pairs), await self._count(capped)

    async def sft_rows(
        self, curation_id: str, holdout: bool, dedupe: bool, cap: int
    ) -> AsyncIterator[Selected]:
        """The rows in reading order, streamed."""
        _, capped = self._sft(curation_id, holdout, dedupe, cap)
        c = CandidateRow
        query = (
            select(c)
            .join(capped, and_(c.curation_id == curation_id, c.seq == capped.c.seq))
            .order_by(c.seq)
            .execution_options(yield_per=500)
        )
        async with self.db.session() as session:
            async for row in await session.stream_scalars(query):
                yield Selected(_candidate(row))

    async def dpo_rows(
        self, curation_id: str, holdout: bool, margin: float, cap: int
    ) -> AsyncIterator[Selected]:
        _, capped = self._dpo(curation_id, holdout, margin, cap)
        chosen = CandidateRow.__table__.alias("chosen")
        rejected = CandidateRow.__table__.alias("rejected")
        query = (
            select(chosen, rejected)
            .select_from(capped)
            .join(
                chosen,
                and_(chosen.c.curation_id == curation_id, chosen.c.seq == capped.c.chosen_seq),
            )
            .join(
                rejected,
                and_(
                    rejected.c.curation_id == curation_id,
                    rejected.c.seq == capped.c.rejected_seq,
                ),
            )
            .order_by(chosen.c.seq)
            .execution_options(yield_per=500)
        )
        width = len(chosen.c)
        async with self.db.session() as session:
            async for row in await session.stream(query):
                yield Selected(_candidate_of(row[:width]), _candidate_of(row[width:]))

    # Provenance

    async def add_provenance(self, curation_id: str, rows: Sequence[Sequence[Any]]) -> bool:
        """Record rows written (each the values of PROVENANCE_FIELDS after the curation's id);
        False, recording nothing, when the job is no longer running (it was cancelled)."""
        async with self.db.session(write=True) as session:
            row = await session.get(CurationRow, curation_id, with_for_update=True)
            if row is None or row.state != jobs_pb2.JOB_STATE_RUNNING:
                return False
            await insert_rows(
                session, PROVENANCE, PROVENANCE_FIELDS, [(curation_id, *r) for r in rows]
            )
            return True

    async def provenance(
        self, owner: str, dataset_id: str, line: int, size: int, page_token: str
    ) -> tuple[CurationRow, list[ProvenanceRow], str]:
        """The curation that made the dataset and a page of its rows' provenance."""
        async with self.db.session() as session:
            row = await session.scalar(
                select(CurationRow)
                .where(
                    CurationRow.owner == owner,
                    or_(
                        CurationRow.dataset_id == dataset_id,
                        CurationRow.eval_dataset_id == dataset_id,
                    ),
                )
                .limit(1)
            )
            if row is None:
                raise not_found("curated dataset", dataset_id)
            holdout = row.eval_dataset_id == dataset_id
            scope = f"provenance:{dataset_id}"
            query = select(ProvenanceRow).where(
                ProvenanceRow.curation_id == row.id, ProvenanceRow.holdout == holdout
            )
            if line:
                query = query.where(ProvenanceRow.line == line)
            query = oldest_first(query, ProvenanceRow.line, Cursor.decode(page_token, scope), size)
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = Cursor(row.created_at, str(rows[-1].line), scope).encode()
        return row, rows, token


def _plain(ranked: Any) -> list[Any]:
    """A ranked subquery's columns but its rank."""
    return [column for column in ranked.c if column.name != "rank"]


def _candidate_of(values: Sequence[Any]) -> Candidate:
    names = [column.name for column in CandidateRow.__table__.c]
    found = dict(zip(names, values, strict=True))
    del found["curation_id"]
    return Candidate(**found)


def provenance_message(row: ProvenanceRow, dataset_id: str) -> cpb.CurationRow:
    return cpb.CurationRow(
        dataset_id=dataset_id,
        line=row.line,
        trace_id=row.trace_id,
        span_id=row.span_id,
        score=row.score,
        rejected_trace_id=row.rejected_trace_id,
        rejected_span_id=row.rejected_span_id,
        rejected_score=row.rejected_score or 0.0,
    )
