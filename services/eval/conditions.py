"""Whether a span's judgments meet a curation's conditions, for a page of spans at a time.

A span may have been judged many times (several rules, direct evaluations, re-runs). Each
condition reads the latest judgment that has what it needs: the overall score and `passed` from
the latest judgment, a named check from the latest judgment that ran a check of that name,
groundedness from the latest judgment that scored it (else the score the span itself carries,
as a producer may send one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from services.common.db import Database
from services.eval.models import CheckRow, JudgmentRow
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.tracing.v1 import spans_pb2 as pb

Key = tuple[str, str]


@dataclass
class _Judged:
    """A span's judgments, reduced to what conditions read."""

    at: tuple[datetime, int] = (datetime.min, 0)
    score: float = 0.0
    passed: bool = False
    grounded_at: tuple[datetime, int] = (datetime.min, 0)
    groundedness: float | None = None
    checks: dict[str, tuple[tuple[datetime, int], bool]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    judged: bool
    score: float
    meets: bool


def meets(conditions: cpb.CurationConditions, judged: _Judged | None, span: pb.Span) -> Verdict:
    if judged is None:
        grounded = (
            span.evaluation.groundedness_score
            if span.evaluation.HasField("groundedness_score")
            else None
        )
        ok = not _needs_judgment(conditions) and (
            not conditions.HasField("min_groundedness")
            or (grounded is not None and grounded >= conditions.min_groundedness)
        )
        return Verdict(False, 0.0, ok)
    ok = True
    if conditions.HasField("min_score"):
        ok &= judged.score >= conditions.min_score
    if conditions.passed:
        ok &= judged.passed
    for name in conditions.passed_checks:
        check = judged.checks.get(name)
        ok &= check is not None and check[1]
    if conditions.HasField("min_groundedness"):
        grounded = judged.groundedness
        if grounded is None and span.evaluation.HasField("groundedness_score"):
            grounded = span.evaluation.groundedness_score
        ok &= grounded is not None and grounded >= conditions.min_groundedness
    return Verdict(True, judged.score, ok)


def _needs_judgment(conditions: cpb.CurationConditions) -> bool:
    return conditions.HasField("min_score") or conditions.passed or bool(conditions.passed_checks)


async def verdicts(
    db: Database,
    owner: str,
    conditions: cpb.CurationConditions,
    spans: Sequence[pb.Span],
) -> dict[Key, Verdict]:
    """Each span's verdict; one query for the judgments of the whole page, one for the named
    checks."""
    keys = {(s.trace_id, s.span_id) for s in spans}
    found: dict[Key, _Judged] = {}
    ids: dict[str, Key] = {}
    if keys:
        query = select(
            JudgmentRow.id,
            JudgmentRow.trace_id,
            JudgmentRow.span_id,
            JudgmentRow.created_at,
            JudgmentRow.attempt,
            JudgmentRow.score,
            JudgmentRow.passed,
            JudgmentRow.groundedness,
        ).where(
            JudgmentRow.owner == owner,
            JudgmentRow.trace_id.in_(sorted({trace for trace, _ in keys})),
        )
        if conditions.rule_id:
            query = query.where(JudgmentRow.rule_id == conditions.rule_id)
        async with db.session() as session:
            rows = (await session.execute(query)).all()
            names = sorted(set(conditions.passed_checks))
            checks: Sequence[Any] = ()
            if names and rows:
                checks = (
                    await session.execute(
                        select(CheckRow.judgment_id, CheckRow.name, CheckRow.passed).where(
                            CheckRow.owner == owner,
                            CheckRow.judgment_id.in_([r.id for r in rows]),
                            CheckRow.name.in_(names),
                        )
                    )
                ).all()
        when: dict[str, tuple[datetime, int]] = {}
        for row in rows:
            key = (row.trace_id, row.span_id)
            if key not in keys:
                continue
            at = (row.created_at.replace(tzinfo=None), row.attempt)
            judged = found.setdefault(key, _Judged())
            ids[row.id] = key
            when[row.id] = at
            if at >= judged.at:
                judged.at, judged.score, judged.passed = at, row.score, row.passed
            if row.groundedness is not None and at >= judged.grounded_at:
                judged.grounded_at, judged.groundedness = at, row.groundedness
        for check in checks:
            judged = found[ids[check.judgment_id]]
            at = when[check.judgment_id]
            seen = judged.checks.get(check.name)
            if seen is None or at >= seen[0]:
                judged.checks[check.name] = (at, check.passed)
    return {
        (s.trace_id, s.span_id): meets(conditions, found.get((s.trace_id, s.span_id)), s)
        for s in spans
    }
