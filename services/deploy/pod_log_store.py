"""The persistence of pods' log lines: appended under the run's lock, read in keyset order.

Lines are numbered by the pod. An append stores only the lines past the last one kept (so a
batch sent again is stored once), then drops the oldest past the run's bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from services.common.db import Database
from services.common.errors import not_found
from services.deploy.models import DeploymentRow, LogLineRow
from services.deploy.states import State


@dataclass(frozen=True)
class LogLine:
    sequence: int
    received_at: datetime
    text: str


@dataclass(frozen=True)
class Appended:
    """What an append did."""

    # The number of the last line kept (0 when there is none).
    last_line: int
    # Lines this append added (those already kept are not counted).
    stored: int
    # Whether this append was the first to drop old lines to keep the bound.
    dropping_began: bool


class PodLogStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(
        self,
        deployment_id: str,
        first_line: int,
        texts: Sequence[str],
        now: datetime,
        keep: int,
    ) -> Appended | None:
        """Add lines numbered from `first_line`, keeping at most `keep` (the newest); None,
        with nothing written, once the run is over. The run's row is locked meanwhile, as
        every change of its state locks it: no line lands after the run ended, so a reader
        that saw the end and then read the lines has them all."""
        async with self.db.session(write=True) as session:
            state = await session.scalar(
                select(DeploymentRow.state)
                .where(DeploymentRow.id == deployment_id)
                .with_for_update()
            )
            if state is None:
                raise not_found("deployment", deployment_id)
            if State(state).terminal:
                return None
            before = await session.scalar(
                select(func.max(LogLineRow.sequence)).where(
                    LogLineRow.deployment_id == deployment_id
                )
            )
            last = before or 0
            skip = max(0, last + 1 - first_line)
            new = list(enumerate(texts, first_line))[skip:]
            if new:
                await session.execute(
                    insert(LogLineRow),
                    [
                        {
                            "deployment_id": deployment_id,
                            "sequence": sequence,
                            "received_at": now,
                            "text": text,
                        }
                        for sequence, text in new
                    ],
                )
                last = new[-1][0]
            dropped = 0
            if new and last > keep:
                result = await session.execute(
                    delete(LogLineRow).where(
                        LogLineRow.deployment_id == deployment_id,
                        LogLineRow.sequence <= last - keep,
                    )
                )
                dropped = int(getattr(result, "rowcount", 0) or 0)
        return Appended(last, len(new), dropped > 0 and (before or 0) <= keep)

    async def after(self, deployment_id: str, sequence: int, limit: int) -> list[LogLine]:
        """The first `limit` lines kept after `sequence`, in order."""
        query = (
            select(LogLineRow)
            .where(LogLineRow.deployment_id == deployment_id, LogLineRow.sequence > sequence)
            .order_by(LogLineRow.sequence)
            .limit(limit)
        )
        async with self.db.session() as session:
            rows = (await session.scalars(query)).all()
        return [LogLine(r.sequence, r.received_at, r.text) for r in rows]
