"""One evaluation: read the trace, pick the span, run the checks, store the judgment, write
its scores back onto the span.

Idempotent per span and configuration: the judgment already made is returned unless a re-run
is asked for; a judgment in error is retried (as a new attempt, the old one kept). Every check
yields a score in [0, 1] or an error saying why it has none, which counts as a failed check
scoring 0 and marks the judgment `error`: a judge that answered prose never passes silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import grpc

from services.common.errors import ServiceError
from services.common.ids import new_id
from services.eval import metrics
from services.eval.groundedness import offline_groundedness
from services.eval.judgment_store import JudgmentStore
from services.eval.plan import GroundednessSpec, JudgeSpec, Plan
from services.eval.subjects import Judged, choose_span, judged
from services.eval.tracing import TracingClient
from services.eval.validators import evaluate
from services.eval.validators.metrics import FIELDS as SPAN_FIELD_KINDS
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import spans_pb2 as pb

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


class JudgeRunner(Protocol):
    """The LLM judge as the evaluator uses it (services/eval/judging.py)."""

    async def grade(
        self, owner: str, spec: JudgeSpec, subject: Judged
    ) -> tuple[jpb.CheckResult, jpb.JudgeOutcome]: ...

    async def claims(
        self, owner: str, spec: JudgeSpec, subject: Judged
    ) -> jpb.GroundednessOutcome | jpb.CheckResult: ...


def failed_check(
    name: str, error: str, reason: str, weight: float, threshold: float, *, kind: str = ""
) -> jpb.CheckResult:
    """A check that produced no score: failed, scoring 0, `error` saying why."""
    return jpb.CheckResult(
        name=name,
        kind=kind or name,
        passed=False,
        score=0.0,
        reason=reason,
        weight=weight,
        threshold=threshold,
        error=error,
    )


class Evaluator:
    def __init__(
        self,
        tracing: TracingClient,
        store: JudgmentStore,
        judge: JudgeRunner,
        clock: Clock,
    ) -> None:
        self.tracing = tracing
        self.store = store
        self.judge = judge
        self.clock = clock

    async def evaluate(
        self,
        owner: str,
        trace_id: str,
        span_id: str,
        plan: Plan,
        *,
        rule_id: str = "",
        rerun: bool = False,
        spans: Sequence[pb.Span] | None = None,
        source: str = "direct",
    ) -> tuple[jpb.Judgment, bool]:
        """The judgment, and whether it is new. `source`: who asked (direct, rule, job), for
        the metrics."""
        found = list(spans) if spans is not None else await self.tracing.trace(owner, trace_id)
        span = choose_span(found, span_id, trace_id)
        key = plan.key()
        previous = await self.store.latest(owner, trace_id, span.span_id, key)
        if previous and previous.status == jpb.JUDGMENT_STATUS_COMPLETE and not rerun:
            return previous, False
        judgment = await self._judge(owner, found, span, plan, rule_id)
        judgment.config_key = key
        judgment.attempt = previous.attempt + 1 if previous else 1
        try:
            await self.store.add(owner, judgment)
        except ServiceError as exc:
            if exc.code != grpc.StatusCode.ABORTED:
                raise
            # The same evaluation ran at the same moment and stored its judgment first.
            twin = await self.store.latest(owner, trace_id, span.span_id, key)
            if twin is None:
                raise
            return twin, False
        status = "complete" if judgment.status == jpb.JUDGMENT_STATUS_COMPLETE else "error"
        metrics.JUDGMENTS.labels(source, status).inc()
        metrics.JUDGMENT_SECONDS.labels(str(plan.judge is not None).lower()).observe(
            judgment.duration_ms / 1000
        )
        for result in judgment.results:
            if result.error:
                metrics.CHECK_ERRORS.labels(result.kind, result.error).inc()
        await self.write_back(owner, judgment)
        return judgment, True

    async def write_back(self, owner: str, judgment: jpb.Judgment) -> bool:
        """Put the scores on the span; a failure is left to the housekeeping pass to retry."""
        evaluation = pb.Evaluation(
            eval_score=judgment.score, eval_passed=judgment.passed, judgment_id=judgment.id
        )
        if judgment.groundedness.HasField("score"):
            evaluation.groundedness_score = judgment.groundedness.score
        try:
            await self.tracing.annotate(owner, judgment.trace_id, judgment.span_id, evaluation)
        except grpc.aio.AioRpcError as exc:
            metrics.WRITE_BACK_FAILURES.inc()
            log.warning(
                "judgment not yet written onto its span",
                extra={"judgment_id": judgment.id, "code": exc.code().name},
            )
            return False
        # Written, or the span is gone (the housekeeping pass flags that): not retried. If
        # the mark itself fails, the stored judgment is answered all the same; the pass
        # writes the scores again, which changes nothing.
        try:
            await self.store.mark_annotated([judgment.id])
        except ServiceError as exc:
            log.warning(
                "judgment written onto its span but not marked so",
                extra={"judgment_id": judgment.id, "error": exc.message},
            )
            return False
        return True

    async def _judge(
        self, owner: str, spans: Sequence[pb.Span], span: pb.Span, plan: Plan, rule_id: str
    ) -> jpb.Judgment:
        started = time.monotonic()
        subject = judged(spans, span, plan.reference)
        judgment = jpb.Judgment(
            id=new_id("jdg"),
            trace_id=span.trace_id,
            span_id=span.span_id,
            session_id=span.session.session_id,
            model=span.model,
            rule_id=rule_id,
        )
        judgment.created_at.FromDatetime(self.clock())
        results: list[jpb.CheckResult] = []
        has_output = span.HasField("output")
        if plan.validators:
            # CPU work (a 5 MB output takes most of a second): off the event loop.
            verdict = await asyncio.to_thread(evaluate, plan.validators, subject.subject)
            for item in verdict.judged:
                config = item.config
                if not has_output and config.kind not in SPAN_FIELD_KINDS:
                    # "Does not contain X" must not pass on an answer that was never recorded.
                    results.append(
                        failed_check(
                            config.name,
                            "no_output",
                            "the span recorded no output to check",
                            config.weight,
                            config.threshold,
                            kind=config.kind,
                        )
                    )
                    continue
                results.append(
                    jpb.CheckResult(
                        name=config.name,
                        kind=config.kind,
                        passed=item.outcome.passed,
                        score=item.outcome.score,
                        reason=item.outcome.reason,
                        weight=config.weight,
                        threshold=config.threshold,
                    )
                )
        has_output = has_output and bool(subject.subject.output.strip())
        if plan.judge is not None:
            spec = plan.judge
            if not has_output:
                results.append(
                    failed_check(
                        "judge",
                        "no_output",
                        "the span recorded no output to judge",
                        spec.weight,
                        spec.threshold,
                    )
                )
            else:
                check, outcome = await self.judge.grade(owner, spec, subject)
                results.append(check)
                judgment.judge.CopyFrom(outcome)
        if plan.groundedness is not None:
            check, grounded = await self._groundedness(owner, plan, subject, has_output)
            results.append(check)
            if grounded is not None:
                judgment.groundedness.CopyFrom(grounded)
        judgment.results.extend(results)
        total = sum(r.weight for r in results)
        judgment.score = min(1.0, max(0.0, sum(r.weight * r.score for r in results) / total))
        judgment.failed.extend(r.name for r in results if not r.passed)
        judgment.passed = not judgment.failed
        errored = any(r.error for r in results)
        judgment.status = jpb.JUDGMENT_STATUS_ERROR if errored else jpb.JUDGMENT_STATUS_COMPLETE
        judgment.duration_ms = (time.monotonic() - started) * 1000
        return judgment

    async def _groundedness(
        self, owner: str, plan: Plan, subject: Judged, has_output: bool
    ) -> tuple[jpb.CheckResult, jpb.GroundednessOutcome | None]:
        spec: GroundednessSpec = plan.groundedness  # type: ignore[assignment]
        if not has_output:
            return failed_check(
                "groundedness",
                "no_output",
                "the span recorded no answer to check",
                spec.weight,
                spec.threshold,
            ), None
        if not subject.context:
            return failed_check(
                "groundedness",
                "no_context",
                "the trace recorded no context to check the answer against (no retrieval "
                "span's documents, no context in the span's input)",
                spec.weight,
                spec.threshold,
            ), None
        if spec.method == jpb.GROUNDEDNESS_METHOD_JUDGE:
            assert plan.judge is not None  # the plan's parse requires one
            answer = await self.judge.claims(owner, plan.judge, subject)
            if isinstance(answer, jpb.CheckResult):  # the judge failed: why is in the check
                answer.weight, answer.threshold = spec.weight, spec.threshold
                return answer, None
            outcome = answer
        else:
            found = await asyncio.to_thread(
                offline_groundedness, subject.subject.output, subject.context
            )
            outcome = jpb.GroundednessOutcome(
                method=jpb.GROUNDEDNESS_METHOD_OFFLINE,
                claims=[
                    jpb.Claim(text=c.text, supported=c.supported, reason=c.reason)
                    for c in found.claims
                ],
                unsupported=found.unsupported,
            )
            if found.score is not None:
                outcome.score = found.score
        if not outcome.HasField("score"):
            return failed_check(
                "groundedness",
                "no_claims",
                "the answer holds no claim that can be checked against the context",
                spec.weight,
                spec.threshold,
            ), outcome
        score = outcome.score
        supported = sum(1 for c in outcome.claims if c.supported)
        reason = f"{supported} of {len(outcome.claims)} claims supported by the context"
        if outcome.unsupported:
            reason += f"; unsupported: {outcome.unsupported[0][:200]!r}"
            if len(outcome.unsupported) > 1:
                reason += f" and {len(outcome.unsupported) - 1} more"
        passed = score >= spec.threshold
        if not passed:
            reason += f"; score {score:.3f} is below the threshold {spec.threshold:g}"
        check = jpb.CheckResult(
            name="groundedness",
            kind="groundedness",
            passed=passed,
            score=score,
            reason=reason,
            weight=spec.weight,
            threshold=spec.threshold,
        )
        return check, outcome
