"""The LLM judge as the evaluator uses it: which endpoint and key, the call (services/eval/judge),
its outcome as a check, and the call's own trace in the tracing service.
"""

from __future__ import annotations

import logging
import secrets

import grpc

from services.eval.evaluator import failed_check
from services.eval.judge import JudgeClient, judge_span
from services.eval.judge.results import JudgeCall, JudgeEndpoint
from services.eval.judge_keys import JudgeKeys
from services.eval.plan import JudgeSpec
from services.eval.settings import EvalSettings
from services.eval.subjects import Judged
from services.eval.tracing import TracingClient
from tunelab.eval.v1 import judgments_pb2 as jpb

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 500


class JudgeRunner:
    def __init__(
        self,
        client: JudgeClient,
        keys: JudgeKeys,
        tracing: TracingClient,
        settings: EvalSettings,
    ) -> None:
        self.client = client
        self.keys = keys
        self.tracing = tracing
        self.settings = settings

    async def _endpoint(self, owner: str, spec: JudgeSpec) -> JudgeEndpoint | jpb.CheckResult:
        if not spec.base_url:
            key = self.settings.judge_api_key
            return JudgeEndpoint(
                base_url=self.settings.judge_base_url,
                model=spec.model or self.settings.judge_model,
                api_key=key.get_secret_value() if key else None,
                vetted=True,
            )
        api_key = None
        if spec.key_name:
            api_key = await self.keys.plaintext(owner, spec.key_name)
            if api_key is None:
                return failed_check(
                    "judge",
                    "no_key",
                    f"no judge key named {spec.key_name!r}: store it with PUT "
                    f"/v1/judge-keys/{spec.key_name}",
                    spec.weight,
                    spec.threshold,
                )
        return JudgeEndpoint(base_url=spec.base_url, model=spec.model, api_key=api_key)

    async def _trace(self, owner: str, call: JudgeCall | None) -> str:
        """Record the judge's call as a trace of its own; its id ('' when not recorded)."""
        if call is None:
            return ""
        trace_id = secrets.token_hex(16)
        try:
            await self.tracing.ingest(owner, [judge_span(call, trace_id, secrets.token_hex(8))])
        except (grpc.aio.AioRpcError, ValueError) as exc:
            log.warning("the judge's call was not traced", extra={"error": str(exc)[:300]})
            return ""
        return trace_id

    async def grade(
        self, owner: str, spec: JudgeSpec, subject: Judged
    ) -> tuple[jpb.CheckResult, jpb.JudgeOutcome]:
        endpoint = await self._endpoint(owner, spec)
        outcome = jpb.JudgeOutcome(scale_min=spec.scale[0], scale_max=spec.scale[1])
        if isinstance(endpoint, jpb.CheckResult):
            outcome.model = spec.model
            return endpoint, outcome
        grade = await self.client.grade(
            endpoint,
            spec.rubric,
            subject.subject.input,
            subject.subject.output,
            subject.context,
            scale=spec.scale,
        )
        outcome.model = grade.model or endpoint.model
        outcome.reasoning = grade.reasoning or ""
        outcome.attempts = grade.attempts
        outcome.latency_ms = grade.latency_ms
        outcome.judge_trace_id = await self._trace(owner, grade.call)
        if grade.raw_score is not None:
            outcome.raw_score = grade.raw_score
        if grade.input_tokens is not None:
            outcome.input_tokens = grade.input_tokens
        if grade.output_tokens is not None:
            outcome.output_tokens = grade.output_tokens
        if grade.error is not None or grade.score is None:
            detail = grade.error_detail or "the judge gave no score"
            return failed_check(
                "judge", grade.error or "unparseable", detail, spec.weight, spec.threshold
            ), outcome
        passed = grade.score >= spec.threshold
        reason = f"the judge scored {grade.raw_score:g} on {spec.scale[0]} to {spec.scale[1]}"
        if grade.reasoning:
            reason += f": {grade.reasoning[:MAX_REASON_CHARS]}"
        check = jpb.CheckResult(
            name="judge",
            kind="judge",
            passed=passed,
            score=grade.score,
            reason=reason,
            weight=spec.weight,
            threshold=spec.threshold,
        )
        return check, outcome

    async def claims(
        self, owner: str, spec: JudgeSpec, subject: Judged
    ) -> jpb.GroundednessOutcome | jpb.CheckResult:
        endpoint = await self._endpoint(owner, spec)
        if isinstance(endpoint, jpb.CheckResult):
            endpoint.name = endpoint.kind = "groundedness"
            return endpoint
        verdict = await self.client.claims(endpoint, subject.subject.output, subject.context)
        await self._trace(owner, verdict.call)
        if verdict.error is not None or verdict.groundedness is None:
            return failed_check(
                "groundedness",
                verdict.error or "unparseable",
                verdict.error_detail or "the judge gave no claims",
                1.0,
                0.0,
            )
        found = verdict.groundedness
        outcome = jpb.GroundednessOutcome(
            method=jpb.GROUNDEDNESS_METHOD_JUDGE,
            claims=[
                jpb.Claim(text=c.text, supported=c.supported, reason=c.reason) for c in found.claims
            ],
            unsupported=found.unsupported,
        )
        if found.score is not None:
            outcome.score = found.score
        return outcome
