"""The evaluation summary, computed in the database: pass rate, mean and nearest-rank
percentile scores, overall or by validator, model or time bucket (services/common/sqlstats.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from services.common.db import Database
from services.common.errors import invalid_argument
from services.common.sqlstats import no_group, percentile_columns, ranked_percentiles, time_bucket
from services.eval.judgment_store import conditions
from services.eval.models import CheckRow, JudgmentRow
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import judgments_pb2 as jpb

PERCENTILES = (50, 90, 99)


@dataclass
class Row:
    group: str
    count: int = 0
    passed: int = 0
    errors: int = 0
    mean_score: float = 0.0
    percentiles: dict[int, float] = field(default_factory=dict)

    def message(self) -> api.SummaryRow:
        p = self.percentiles
        return api.SummaryRow(
            group=self.group,
            count=self.count,
            passed=self.passed,
            pass_rate=self.passed / self.count if self.count else 0.0,
            mean_score=self.mean_score,
            score=api.ScorePercentiles(p50=p.get(50, 0.0), p90=p.get(90, 0.0), p99=p.get(99, 0.0)),
            errors=self.errors,
        )


async def summary(
    db: Database, owner: str, where: api.JudgmentFilter, group_by: api.SummaryGroup.ValueType
) -> list[Row]:
    if group_by not in api.SummaryGroup.values():
        raise invalid_argument("group_by", "group_by is validator, model, hour or day")
    conds = conditions(owner, where)
    if group_by == api.SUMMARY_GROUP_VALIDATOR:
        score, passed = CheckRow.score, CheckRow.passed
        errors = func.sum(case((CheckRow.error.is_(True), 1), else_=0))
        group: ColumnElement[Any] = CheckRow.name.expression
        base = (
            select().select_from(CheckRow).join(JudgmentRow, CheckRow.judgment_id == JudgmentRow.id)
        )
    else:
        score, passed = JudgmentRow.score, JudgmentRow.passed
        errors = func.sum(case((JudgmentRow.status == jpb.JUDGMENT_STATUS_ERROR, 1), else_=0))
        group = _group(db, group_by)
        base = select().select_from(JudgmentRow)
    inline = [] if db.is_sqlite else percentile_columns(score, PERCENTILES, "p")
    totals = (
        base.add_columns(
            *inline,
            group.label("grp"),
            func.count().label("n"),
            func.sum(case((passed.is_(True), 1), else_=0)).label("passed"),
            errors.label("errors"),
            func.avg(score).label("mean"),
        )
        .where(*conds)
        .group_by(group)
        .order_by(group)
    )
    rows: dict[str, Row] = {}
    async with db.session() as session:
        for r in await session.execute(totals):
            rows[r.grp or ""] = Row(
                group=r.grp or "",
                count=int(r.n),
                passed=int(r.passed or 0),
                errors=int(r.errors or 0),
                mean_score=float(r.mean or 0.0),
                percentiles={p: float(getattr(r, f"p{p}") or 0.0) for p in PERCENTILES}
                if inline
                else {},
            )
        if not inline:
            ranks = ranked_percentiles(group, score, conds, PERCENTILES, base)
            for r in await session.execute(ranks):
                if (row := rows.get(r.grp or "")) is not None:
                    row.percentiles = {p: float(getattr(r, f"p{p}") or 0.0) for p in PERCENTILES}
    return list(rows.values())


def _group(db: Database, group_by: api.SummaryGroup.ValueType) -> ColumnElement[Any]:
    if group_by == api.SUMMARY_GROUP_MODEL:
        return JudgmentRow.model.expression
    if group_by in (api.SUMMARY_GROUP_HOUR, api.SUMMARY_GROUP_DAY):
        hourly = group_by == api.SUMMARY_GROUP_HOUR
        return time_bucket(db.is_sqlite, JudgmentRow.created_at, hourly)
    return no_group()
