"""What a judge call is given and what it gives back: endpoints, grades, claim verdicts and the
record of the call kept for its trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypedDict

from services.eval.groundedness import Groundedness

ErrorKind = Literal[
    "timeout", "unparseable", "out_of_scale", "refused_url", "http_error", "unreachable"
]
"""Why a judgment has no score:
- timeout: the endpoint did not answer within the call's deadline (or each attempt timed out);
- unparseable: it answered, but not with exactly the JSON object asked for (prose, other keys,
  wrong types, not JSON, a refusal);
- out_of_scale: the score is outside the scale, NaN or infinite;
- refused_url: the base URL may not be called on a user's behalf (checked before connecting);
- http_error: a 4xx other than 429, a redirect, or 429/5xx still after the last attempt;
- unreachable: no connection could be made (refused, reset, DNS) after the last attempt.
"""

ResponseFormat = Literal["json_schema", "json_object", "none"]
"""How the structured answer was asked for, from best to plainest."""


class ChatMessage(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible chat-completions API: POST {base_url}/chat/completions."""

    base_url: str
    """E.g. "https://api.openai.com/v1"."""
    model: str
    api_key: str | None = field(default=None, repr=False)
    """Sent only as `Authorization: Bearer`; never in a result, a log line or an error."""
    vetted: bool = False
    """True for the operator's configured judge: its address is not checked. False for a URL a
    user gave: it must pass the egress check (services.common.egress) with the operator's
    allowlist, before any connection."""


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(frozen=True)
class JudgeCall:
    """One judge call as it went, for its trace (`judge_span`); holds no header and no key."""

    base_url: str
    """The endpoint's base URL without user info, query or fragment."""
    api_endpoint: str
    model: str
    """The model asked for."""
    messages: tuple[ChatMessage, ...]
    started_at: datetime
    ended_at: datetime
    latency_ms: float
    """From the call's start (a slot held) to its end: every attempt and wait."""
    purpose: str
    """"grade" or "claims"."""
    answered_model: str | None = None
    answer_text: str | None = None
    """The assistant message's content as answered (masked for the key)."""
    http_status: int | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    """HTTP requests sent, retries and response-format fallbacks included."""
    retry_reason: str | None = None
    """Why the last retry happened: rate_limit, server, timeout, network."""
    response_format: ResponseFormat = "json_schema"
    """The response format of the last request sent."""
    provider_request_id: str | None = None
    error: ErrorKind | None = None
    error_detail: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Judged:
    """What every judge result says of the call that made it."""

    error: ErrorKind | None = None
    error_detail: str | None = None
    """Safe to show: no key, at most a short, sanitized quote of the endpoint's answer."""
    attempts: int = 0
    latency_ms: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    """The model as the endpoint named it in its answer (e.g. a dated snapshot)."""
    call: JudgeCall | None = None
    """None only when nothing was sent (an invalid scale is a ValueError instead)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, kw_only=True)
class Grade(_Judged):
    """A rubric score, or why there is none (`error`): a failure never yields a default score."""

    raw_score: float | None = None
    """The score as the judge gave it, on the requested scale."""
    score: float | None = None
    """(raw_score - min) / (max - min), in [0, 1]."""
    reasoning: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimsVerdict(_Judged):
    """Judge-based groundedness, in the offline method's terms (services.eval.groundedness):
    the answer split into claims by the model, each said supported or not by the context.
    Each claim's `strength` is 1.0 when supported and 0.0 when not (the model gives no degree);
    `chunk_index` is the context chunk the model named, if any."""

    groundedness: Groundedness | None = None
    """None when the call failed; its score is None when the answer has no claims."""

    @property
    def score(self) -> float | None:
        return self.groundedness.score if self.groundedness else None

    @property
    def unsupported(self) -> list[str]:
        return self.groundedness.unsupported if self.groundedness else []
