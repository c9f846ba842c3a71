"""Rules at work: following new spans, and running a rule over history as a job.

Following reads the tracing service's change feed (ListSpanChanges) from the cursor the rule
stored, judges the sampled spans it has not judged, and stores the new cursor after each page.
A restart resumes from the stored cursor; a page read twice (the eval service stopped before
storing its cursor, or a span changed again: our own annotation changes it) judges nothing
twice, because a span already judged under the rule's configuration is skipped and sampling
is a hash of the trace id, not a coin toss. A span judged with an error is not retried by
following (it would be retried every time its annotation brings it back); a job with
`rerun` does that.

A job walks the tracing list (newest first, a page token that stays valid while spans
arrive) over its time range, storing the page token and its counts after each page, so that
it resumes where it stopped after a cancel or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import grpc

from services.common.errors import ServiceError
from services.eval.evaluator import Evaluator
from services.eval.judgment_store import JudgmentStore
from services.eval.plan import Plan, plan_from_config
from services.eval.rule_store import ACTIVE, RuleStore, StoredRule
from services.eval.tracing import TracingClient
from tunelab.eval.v1 import jobs_pb2
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
FOLLOW_PAGE = 200
JOB_PAGE = 100
MAX_RUNNING_JOBS = 2
# Parsed rule configurations kept (more than any installation's rules; then they are re-parsed).
MAX_PLANS = 1024


def sampled(rule_id: str, trace_id: str, rate: float) -> bool:
    """Whether the rule judges this trace: the same answer every time it is asked."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{rule_id}\x00{trace_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


_PERMANENT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


def _refusal(error: BaseException) -> str | None:
    """The message of an error that retrying cannot cure, or None."""
    if isinstance(error, ServiceError) and error.code in _PERMANENT:
        return error.message
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _PERMANENT:
        return error.details() or error.code().name
    return None


def _complete(span: pb.Span) -> bool:
    """A span sent in parts is judged once its end has arrived."""
    return span.timing.HasField("end_time")


class RuleWorker:
    def __init__(
        self,
        rules: RuleStore,
        judgments: JudgmentStore,
        tracing: TracingClient,
        evaluator: Evaluator,
        clock: Clock,
        *,
        has_operator_judge: bool,
        concurrency: int,
        interval: float,
    ) -> None:
        self.rules = rules
        self.judgments = judgments
        self.tracing = tracing
        self.evaluator = evaluator
        self.clock = clock
        self.has_operator_judge = has_operator_judge
        self.limit = asyncio.Semaphore(concurrency)
        self.interval = interval
        self.running: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self._plans: dict[str, Plan] = {}

    def plan(self, rule: StoredRule) -> Plan:
        """The rule's checked plan, parsed once per configuration (not every round: parsing
        compiles its regexes and JSON Schemas)."""
        plan = self._plans.get(rule.config_key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = plan_from_config(rule.config, has_operator_judge=self.has_operator_judge)
            self._plans[rule.config_key] = plan
        return plan

    async def _judge_all(
        self, rule: StoredRule, plan: Plan, spans: Sequence[pb.Span], rerun: bool, source: str
    ) -> tuple[int, int]:
        """Judge spans (already sampled and new); (judged, failed)."""

        async def one(span: pb.Span) -> bool | None:
            async with self.limit:
                try:
                    _, created = await self.evaluator.evaluate(
                        rule.owner,
                        span.trace_id,
                        span.span_id,
                        plan,
                        rule_id=rule.id,
                        rerun=rerun,
                        source=source,
                    )
                    return created
                except ServiceError as exc:
                    if exc.code == grpc.StatusCode.NOT_FOUND:  # deleted meanwhile
                        return None
                    raise

        outcomes = await asyncio.gather(*(one(s) for s in spans), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(1 for o in outcomes if o is True), sum(1 for o in outcomes if o is None)

    # Following new spans

    async def follow_forever(self) -> None:
        while True:
            busy = False
            try:
                rules = await self.rules.enabled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: wait
                log.warning("following new spans paused", extra={"error": repr(exc)[:300]})
                rules = []
            # Side by side, each on its own: one rule's slow judge or failing filter holds
            # up no other (the judging itself is bounded by the shared concurrency limit).
            outcomes = await asyncio.gather(
                *(self.follow(rule) for rule in rules), return_exceptions=True
            )
            for rule, outcome in zip(rules, outcomes, strict=True):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, BaseException):
                    await self._failed(rule, outcome)
                else:
                    busy |= outcome
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.interval)
                self.wake.clear()

    async def _failed(self, rule: StoredRule, error: BaseException) -> None:
        """A refusal that no retry can cure pauses the rule with the reason; anything else
        (a service away) is retried on the next round."""
        refused = _refusal(error)
        if refused is None:
            log.warning(
                "following new spans paused for a rule",
                extra={"rule_id": rule.id, "error": repr(error)[:300]},
            )
            return
        log.warning("rule paused", extra={"rule_id": rule.id, "reason": refused})
        with contextlib.suppress(Exception):
            await self.rules.pause(rule.id, f"paused: {refused}"[:2000])

    async def follow(self, rule: StoredRule) -> bool:
        """One page of the rule's new spans; True when more may be waiting."""
        plan = self.plan(rule)
        changes = await self.tracing.changes(rule.owner, rule.filter, rule.cursor, FOLLOW_PAGE)
        unique = {(s.trace_id, s.span_id): s for s in changes.spans if _complete(s)}
        wanted = [s for s in unique.values() if sampled(rule.id, s.trace_id, rule.sampling_rate)]
        done = await self.judgments.judged(
            rule.owner, rule.config_key, [(s.trace_id, s.span_id) for s in wanted]
        )
        todo = [s for s in wanted if (s.trace_id, s.span_id) not in done]
        judged, _ = await self._judge_all(rule, plan, todo, rerun=False, source="rule")
        if changes.cursor != rule.cursor or judged:
            await self.rules.advance(rule.id, changes.cursor, len(unique), self.clock())
        return not changes.caught_up and bool(changes.spans)

    # Jobs over history

    async def run_jobs_forever(self) -> None:
        while True:
            try:
                for job in await self.rules.active_jobs():
                    if job.id not in self.running and len(self.running) < MAX_RUNNING_JOBS:
                        self._start_job(job.id, job.owner, job.rule_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("jobs paused", extra={"error": repr(exc)[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)

    def _start_job(self, job_id: str, owner: str, rule_id: str) -> None:
        task = asyncio.create_task(self.run_job(job_id, owner, rule_id))
        self.running[job_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self.running.pop(job_id, None)

        task.add_done_callback(forget)

    async def run_job(self, job_id: str, owner: str, rule_id: str) -> None:
        try:
            await self._run_job(job_id, owner, rule_id)
        except asyncio.CancelledError:
            raise
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                log.warning("job paused", extra={"job_id": job_id, "error": exc.message})
                return  # still running: picked up again on the next round
            await self.rules.set_job_state(
                job_id, jobs_pb2.JOB_STATE_FAILED, self.clock(), only_from=ACTIVE, error=exc.message
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("job paused", extra={"job_id": job_id, "code": exc.code().name})
            await asyncio.sleep(self.interval)
        except Exception:
            log.exception("job failed", extra={"job_id": job_id})
            await self.rules.set_job_state(
                job_id,
                jobs_pb2.JOB_STATE_FAILED,
                self.clock(),
                only_from=ACTIVE,
                error="internal error; the eval service's log has the details",
            )

    async def _run_job(self, job_id: str, owner: str, rule_id: str) -> None:
        row = await self.rules.set_job_state(
            job_id, jobs_pb2.JOB_STATE_RUNNING, self.clock(), only_from=ACTIVE
        )
        if row is None or row.state != jobs_pb2.JOB_STATE_RUNNING:
            return
        rule = await self.rules.get(owner, rule_id)
        plan = self.plan(rule)
        where = tapi.SpanFilter()
        where.CopyFrom(rule.filter)
        where.start_time_to.FromDatetime(row.start_time_to)
        if row.start_time_from is not None:
            where.start_time_from.FromDatetime(row.start_time_from)
        token = row.page_token
        since = row.created_at if row.rerun else None
        while True:
            spans, next_token = await self.tracing.spans(owner, where, token, JOB_PAGE)
            unique = {(s.trace_id, s.span_id): s for s in spans}
            wanted = [
                s for s in unique.values() if sampled(rule.id, s.trace_id, rule.sampling_rate)
            ]
            done = await self.judgments.judged(
                owner, rule.config_key, [(s.trace_id, s.span_id) for s in wanted], since=since
            )
            todo = [s for s in wanted if (s.trace_id, s.span_id) not in done]
            judged, failed = await self._judge_all(rule, plan, todo, rerun=row.rerun, source="job")
            state = await self.rules.job_progress(
                job_id,
                next_token or token,
                len(unique),
                judged,
                len(unique) - judged - failed,
                failed,
                self.clock(),
            )
            if state != jobs_pb2.JOB_STATE_RUNNING:
                return  # cancelled (or deleted with its rule) between pages
            if not next_token:
                break
            token = next_token
        await self.rules.set_job_state(
            job_id,
            jobs_pb2.JOB_STATE_SUCCEEDED,
            self.clock(),
            only_from=(jobs_pb2.JOB_STATE_RUNNING,),
        )

    async def stop(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
