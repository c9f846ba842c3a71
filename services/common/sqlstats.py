"""Statistics computed in the database on PostgreSQL and SQLite alike: nearest-rank
percentiles and time buckets, for the services' analytics and summaries.

Percentiles are nearest-rank (the value at rank ceil(p * n) of the sorted values):
PostgreSQL's percentile_disc aggregate in the same pass as the totals; on SQLite, which has
no percentile aggregate, a window function numbers the values and the same rank is picked,
in SQL too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, literal, select


def percentile_columns(
    value: Any, percentiles: Sequence[int], prefix: str
) -> list[ColumnElement[Any]]:
    """PostgreSQL: percentile_disc aggregates, labelled `{prefix}{p}`."""
    return [
        func.percentile_disc(p / 100).within_group(value).label(f"{prefix}{p}") for p in percentiles
    ]


def ranked_percentiles(
    group: ColumnElement[Any],
    value: Any,
    conds: Sequence[ColumnElement[bool]],
    percentiles: Sequence[int],
    base: Select[Any] | None = None,
) -> Select[Any]:
    """SQLite: per group (`grp`), the nearest-rank percentiles of `value` as `p{p}`, over the
    rows of `base` (its FROM and joins) that meet `conds`."""
    ranked = (
        (base if base is not None else select())
        .add_columns(
            group.label("grp"),
            value.label("v"),
            func.row_number().over(partition_by=group, order_by=value).label("rn"),
            func.count().over(partition_by=group).label("n"),
        )
        .where(*conds, value.is_not(None))
        .subquery()
    )
    # Nearest rank, in integers: ceil(p * n / 100) = (p * n + 99) / 100.
    picks = [
        func.max(case((ranked.c.rn == (p * ranked.c.n + 99) // 100, ranked.c.v))).label(f"p{p}")
        for p in percentiles
    ]
    return select(ranked.c.grp, *picks).group_by(ranked.c.grp)


def time_bucket(is_sqlite: bool, column: Any, hourly: bool) -> ColumnElement[Any]:
    """The start of the hour or day `column` (a UTC time) falls in, as RFC 3339 text."""
    if is_sqlite:  # stored as naive UTC text
        pattern = "%Y-%m-%dT%H:00:00Z" if hourly else "%Y-%m-%dT00:00:00Z"
        return func.strftime(pattern, column)
    unit = "hour" if hourly else "day"
    utc = func.timezone("UTC", column)
    return func.to_char(func.date_trunc(unit, utc), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


def no_group() -> ColumnElement[Any]:
    return literal("")
