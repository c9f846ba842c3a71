"""The eval service's LLM judge: rubric grades and claims-based groundedness from any
OpenAI-compatible chat-completions endpoint, each call's record turned into a span of its own.

    async with JudgeClient(allow=parse_allowlist(settings.judge_egress_allow)) as judge:
        grade = await judge.grade(endpoint, rubric, input_text, output_text, context)
        if grade.error: ...  # timeout, unparseable, out_of_scale, refused_url, http_error ...
        span = judge_span(grade.call, trace_id, span_id)
"""

from services.eval.judge.client import JudgeClient, public_url, retry_after
from services.eval.judge.prompts import MAX_CONTEXT_CHARS, MAX_TEXT_CHARS
from services.eval.judge.results import (
    ChatMessage,
    ClaimsVerdict,
    ErrorKind,
    Grade,
    JudgeCall,
    JudgeEndpoint,
    ResponseFormat,
    Usage,
)
from services.eval.judge.span import judge_span

__all__ = [
    "MAX_CONTEXT_CHARS",
    "MAX_TEXT_CHARS",
    "ChatMessage",
    "ClaimsVerdict",
    "ErrorKind",
    "Grade",
    "JudgeCall",
    "JudgeClient",
    "JudgeEndpoint",
    "ResponseFormat",
    "Usage",
    "judge_span",
    "public_url",
    "retry_after",
]
