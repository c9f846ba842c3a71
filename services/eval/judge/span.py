"""The judge call's own span, for the tracing service: what was asked, what came back, what it
cost in tokens and time, and why it failed. It holds no header and no key."""

from __future__ import annotations

import json

from google.protobuf import json_format, struct_pb2

from services.eval.judge.results import JudgeCall
from tunelab.tracing.v1 import spans_pb2

PROVIDER = "openai-compatible"
TAG = "tunelab-judge"


def judge_span(call: JudgeCall, trace_id: str, span_id: str) -> spans_pb2.Span:
    """An LLM span of the call, a root (the judge's trace is its own, linked from the
    judgment); cost is left to the tracing service's price table."""
    span = spans_pb2.Span(
        trace_id=trace_id,
        span_id=span_id,
        name=f"judge.{call.purpose}",
        kind=spans_pb2.SPAN_KIND_LLM,
        status=spans_pb2.SPAN_STATUS_OK if call.error is None else spans_pb2.SPAN_STATUS_ERROR,
        model=call.answered_model or call.model,
        provider=PROVIDER,
        tags=[TAG],
    )
    span.timing.start_time.FromDatetime(call.started_at)
    span.timing.end_time.FromDatetime(call.ended_at)
    if call.usage.input_tokens is not None:
        span.usage.input_tokens = call.usage.input_tokens
    if call.usage.output_tokens is not None:
        span.usage.output_tokens = call.usage.output_tokens
    if call.usage.total_tokens is not None:
        span.usage.total_tokens = call.usage.total_tokens
    span.request.api_endpoint = call.api_endpoint
    span.request.base_url = call.base_url
    if call.http_status is not None:
        span.request.http_status = call.http_status
    if call.provider_request_id:
        span.request.provider_request_id = call.provider_request_id
    if call.attempts > 1:
        span.retries.count = call.attempts - 1
        span.retries.reason = call.retry_reason or "response_format"
    if call.error is not None:
        span.status_message = call.error_detail or call.error
        span.error_category = error_category(call)
    span.input.CopyFrom(json_format.Parse(json.dumps(call.messages), struct_pb2.Value()))
    if call.answer_text is not None:
        span.output.string_value = call.answer_text
    span.metadata.update(
        {
            "judge.purpose": call.purpose,
            "judge.requested_model": call.model,
            "judge.response_format": call.response_format,
            **({"judge.error": call.error} if call.error else {}),
        }
    )
    return span


def error_category(call: JudgeCall) -> str:
    """The tracing service's error_category for a failed call (its free-text vocabulary:
    rate_limit, timeout, auth, server, network, invalid_request ...)."""
    if call.error == "http_error":
        status = call.http_status or 0
        if status == 429:
            return "rate_limit"
        if status in (401, 403):
            return "auth"
        return "server" if status >= 500 else "invalid_request"
    return {"unreachable": "network"}.get(call.error or "", call.error or "")
