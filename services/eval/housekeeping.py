"""The eval service's periodic pass: scores that did not reach their span are written again,
and judgments of traces that were deleted (retention) are flagged `trace_deleted`.

Judgments of deleted traces are kept, flagged, rather than deleted: a pass rate over last
month stays what it was when the traces age out, and the judgment still says what was judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from services.eval.evaluator import Evaluator
from services.eval.judgment_store import JudgmentStore
from services.eval.tracing import TracingClient

log = logging.getLogger(__name__)
BATCH = 500


class Housekeeping:
    def __init__(
        self,
        judgments: JudgmentStore,
        tracing: TracingClient,
        evaluator: Evaluator,
        interval: float,
    ) -> None:
        self.judgments = judgments
        self.tracing = tracing
        self.evaluator = evaluator
        self.interval = interval

    async def forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("housekeeping paused", extra={"error": repr(exc)[:300]})

    async def run_once(self) -> tuple[int, int]:
        """(scores written again, judgments flagged)."""
        written = 0
        for owner, judgment in await self.judgments.unannotated(BATCH):
            if await self.evaluator.write_back(owner, judgment):
                written += 1
        flagged = 0
        after = ("", "")
        while True:
            pairs = await self.judgments.live_traces(after, BATCH)
            if not pairs:
                break
            by_owner: defaultdict[str, list[str]] = defaultdict(list)
            for owner, trace_id in pairs:
                by_owner[owner].append(trace_id)
            for owner, trace_ids in by_owner.items():
                present = await self.tracing.existing_traces(owner, trace_ids)
                gone = [t for t in trace_ids if t not in present]
                flagged += await self.judgments.flag_deleted(owner, gone)
            after = pairs[-1]
        if written or flagged:
            log.info("housekeeping", extra={"rewritten": written, "flagged_deleted": flagged})
        return written, flagged
