"""Analytics computed in the database: one aggregate query and one percentile query per call,
whatever the number of spans, on PostgreSQL and SQLite alike (services/common/sqlstats.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from services.common.db import Database
from services.common.sqlstats import no_group, percentile_columns, ranked_percentiles, time_bucket
from services.tracing.models import SpanRow
from services.tracing.store import conditions
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api

PERCENTILES = (50, 95, 99)


@dataclass
class Row:
    group: str
    count: int = 0
    error_rate: float = 0.0
    latency: dict[int, float] = field(default_factory=dict)
    ttft: dict[int, float] = field(default_factory=dict)
    mean_tokens_per_second: float = 0.0
    total_cost_usd: float = 0.0
    mean_cost_usd: float = 0.0
    cache_hit_ratio: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


async def analytics(
    db: Database, owner: str, where: api.SpanFilter, group_by: api.AnalyticsGroup.ValueType
) -> list[Row]:
    group = _group(db, group_by)
    conds = conditions(owner, where)
    errors = func.sum(case((SpanRow.status == pb.SPAN_STATUS_ERROR, 1), else_=0))
    # PostgreSQL has the percentile aggregate: one pass, no window sorts.
    inline = (
        []
        if db.is_sqlite
        else [
            *percentile_columns(SpanRow.duration_ms, PERCENTILES, "latency"),
            *percentile_columns(SpanRow.ttft_ms, PERCENTILES, "ttft"),
        ]
    )
    totals = (
        select(
            *inline,
            group.label("grp"),
            func.count().label("n"),
            errors.label("errors"),
            func.avg(SpanRow.tokens_per_second).label("tps"),
            func.coalesce(func.sum(SpanRow.cost_usd), 0.0).label("cost"),
            func.avg(SpanRow.cost_usd).label("mean_cost"),
            func.coalesce(func.sum(SpanRow.input_tokens), 0).label("input"),
            func.coalesce(func.sum(SpanRow.output_tokens), 0).label("output"),
            func.coalesce(func.sum(SpanRow.cache_read_tokens), 0).label("cached"),
        )
        .where(*conds)
        .group_by(group)
        .order_by(group)
    )
    async with db.session() as session:
        rows: dict[str, Row] = {}
        for r in await session.execute(totals):
            rows[r.grp or ""] = Row(
                group=r.grp or "",
                count=r.n,
                error_rate=(r.errors or 0) / r.n if r.n else 0.0,
                mean_tokens_per_second=float(r.tps or 0.0),
                total_cost_usd=float(r.cost or 0.0),
                mean_cost_usd=float(r.mean_cost or 0.0),
                cache_hit_ratio=(r.cached / r.input) if r.input else 0.0,
                input_tokens=int(r.input),
                output_tokens=int(r.output),
                latency={p: float(getattr(r, f"latency{p}") or 0.0) for p in PERCENTILES}
                if inline
                else {},
                ttft={p: float(getattr(r, f"ttft{p}") or 0.0) for p in PERCENTILES}
                if inline
                else {},
            )
        windowed = [] if inline else [(SpanRow.duration_ms, "latency"), (SpanRow.ttft_ms, "ttft")]
        for column, target in windowed:
            for r in await session.execute(ranked_percentiles(group, column, conds, PERCENTILES)):
                if (row := rows.get(r.grp or "")) is not None:
                    getattr(row, target).update(
                        {p: float(getattr(r, f"p{p}") or 0.0) for p in PERCENTILES}
                    )
    return list(rows.values())


def _group(db: Database, group_by: api.AnalyticsGroup.ValueType) -> ColumnElement[Any]:
    if group_by == api.ANALYTICS_GROUP_MODEL:
        return SpanRow.model.expression
    if group_by == api.ANALYTICS_GROUP_PROVIDER:
        return SpanRow.provider.expression
    if group_by in (api.ANALYTICS_GROUP_HOUR, api.ANALYTICS_GROUP_DAY):
        hourly = group_by == api.ANALYTICS_GROUP_HOUR
        return time_bucket(db.is_sqlite, SpanRow.start_time, hourly)
    return no_group()
