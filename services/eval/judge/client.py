"""The LLM judge's client: OpenAI-compatible chat completions, asked for a strict JSON answer.

One `JudgeClient` per service (one httpx connection pool). Each call:
- waits for one of the endpoint's `concurrency` slots (per base URL and model);
- then has `deadline_s` for everything that follows: every attempt, backoff and Retry-After
  wait. Waiting for a slot is not counted, so a backlog in this process is not reported as the
  endpoint timing out (callers bound their own fan-out);
- checks a user-given base URL with services.common.egress before any connection (loopback,
  link-local, private addresses refused unless allowlisted) and sends it to the checked address
  with no redirect followed; the operator's own endpoint (`vetted=True`) is sent as configured;
- asks for `response_format` json_schema (strict), and where the endpoint refuses that (a 400
  naming response_format or json_schema) json_object, then nothing; what works is remembered
  per endpoint;
- retries 429, 5xx, timeouts and connection errors up to `max_attempts` with exponential
  backoff and full jitter, or waits what `Retry-After` asks (seconds or an HTTP date) when it
  asks no more than `max_retry_after_s` and the deadline allows, else fails at once;
- never raises for what the endpoint does: the result's `error` says why there is no score.

The API key is sent only in the Authorization header, registered with services.common.redact,
and masked out of everything the endpoint answers before it is kept, logged or shown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx

from services.common import egress, redact
from services.eval.groundedness import Claim, Groundedness
from services.eval.judge import answers, prompts
from services.eval.judge.results import (
    ClaimsVerdict,
    ErrorKind,
    Grade,
    JudgeCall,
    JudgeEndpoint,
    ResponseFormat,
    Usage,
)

log = logging.getLogger(__name__)

API_ENDPOINT = "/chat/completions"
FORMATS: tuple[ResponseFormat, ...] = ("json_schema", "json_object", "none")
ERROR_QUOTE_CHARS = 160

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Exchange:
    """What happened so far in one call; frozen into a JudgeCall at the end."""

    endpoint: JudgeEndpoint
    prompt: prompts.Prompt
    purpose: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    response_format: ResponseFormat = "json_schema"
    http_status: int | None = None
    retry_reason: str | None = None
    request_id: str | None = None
    answered_model: str | None = None
    answer: str | None = None
    """The content as kept (key masked); `content` is what is parsed (the key, too, masked)."""
    content: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: ErrorKind | None = None
    detail: str | None = None

    def fail(self, kind: ErrorKind, detail: str) -> None:
        self.error, self.detail = kind, _mask(detail, self.endpoint.api_key)

    def call(self) -> JudgeCall:
        return JudgeCall(
            base_url=public_url(self.endpoint.base_url),
            api_endpoint=API_ENDPOINT,
            model=self.endpoint.model,
            messages=self.prompt.messages,
            started_at=self.started_at,
            ended_at=datetime.now(UTC),
            latency_ms=(time.monotonic() - self.started) * 1000,
            purpose=self.purpose,
            answered_model=self.answered_model,
            answer_text=self.answer,
            http_status=self.http_status,
            usage=self.usage,
            attempts=self.attempts,
            retry_reason=self.retry_reason,
            response_format=self.response_format,
            provider_request_id=self.request_id,
            error=self.error,
            error_detail=self.detail,
        )


@dataclass(frozen=True)
class _Retry:
    """An attempt that may be retried: the failure it ends the call with if it is the last."""

    kind: ErrorKind
    reason: str
    """For the trace's retries.reason: rate_limit, server, timeout, network."""
    detail: str
    hint: float | None = None
    """What Retry-After asked for, in seconds."""


# The endpoint refused the response format: ask again at once with the next one.
_FALLBACK = _Retry("http_error", "response_format", "")


class JudgeClient:
    def __init__(
        self,
        *,
        allow: Sequence[egress.IPNetwork] = (),
        resolve: egress.Resolver = egress.system_resolver,
        concurrency: int = 8,
        max_attempts: int = 4,
        deadline_s: float = 60.0,
        attempt_timeout_s: float = 30.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`allow`: the operator's egress allowlist for user-given URLs (parse_allowlist)."""
        if concurrency < 1 or max_attempts < 1 or deadline_s <= 0 or attempt_timeout_s <= 0:
            raise ValueError("concurrency, max_attempts and the timeouts must be positive")
        self._allow, self._resolve, self._sleep = tuple(allow), resolve, sleep
        self._concurrency, self._max_attempts = concurrency, max_attempts
        self._deadline_s, self._attempt_timeout_s = deadline_s, attempt_timeout_s
        self._backoff_base_s, self._backoff_max_s = backoff_base_s, backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._random = secrets.SystemRandom()
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._formats: dict[tuple[str, str], int] = {}  # index into FORMATS that works
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=attempt_timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the two judgments -------------------------------------------------------------------

    async def grade(
        self,
        endpoint: JudgeEndpoint,
        rubric: str,
        input_text: str,
        output_text: str,
        context: Sequence[str] = (),
        scale: tuple[float, float] = (1, 10),
    ) -> Grade:
        """The output graded on `scale` by the rubric; a ValueError only for an invalid scale."""
        low, high = _checked_scale(scale)
        prompt = prompts.grade_prompt(rubric, input_text, output_text, context, (low, high))
        exchange, content = await self._exchange(endpoint, prompt, "grade")
        raw = reasoning = None
        if content is not None:
            try:
                raw, reasoning = answers.parse_grade(content, (low, high))
            except answers.AnswerError as wrong:
                exchange.fail(wrong.kind, wrong.detail)
        call = exchange.call()
        if call.error is not None or raw is None:
            return Grade(**_judged(call))
        return Grade(
            **_judged(call),
            raw_score=raw,
            score=(raw - low) / (high - low),
            reasoning=redact.redact(reasoning or ""),
        )

    async def claims(
        self, endpoint: JudgeEndpoint, answer: str, context: Sequence[str]
    ) -> ClaimsVerdict:
        """Judge-based groundedness: the model's claims of the answer, each checked against the
        context; score = supported / claims, None when the answer makes no claim."""
        prompt = prompts.claims_prompt(answer, context)
        exchange, content = await self._exchange(endpoint, prompt, "claims")
        found = None
        if content is not None:
            try:
                found = answers.parse_claims(content, prompt.chunks)
            except answers.AnswerError as wrong:
                exchange.fail(wrong.kind, wrong.detail)
        call = exchange.call()
        if call.error is not None or found is None:
            return ClaimsVerdict(**_judged(call))
        return ClaimsVerdict(**_judged(call), groundedness=_groundedness(found, prompt, call))

    # -- one call: slot, deadline, attempts --------------------------------------------------

    async def _exchange(
        self, endpoint: JudgeEndpoint, prompt: prompts.Prompt, purpose: str
    ) -> tuple[_Exchange, str | None]:
        if endpoint.api_key:
            redact.register(endpoint.api_key)
        if (refused := await self._refusal(endpoint)) is not None:
            exchange = _Exchange(endpoint, prompt, purpose)
            exchange.fail("refused_url", refused)
            return exchange, None
        key = (endpoint.base_url, endpoint.model)
        slot = self._slots.setdefault(key, asyncio.Semaphore(self._concurrency))
        async with slot:
            exchange = _Exchange(endpoint, prompt, purpose)
            deadline = asyncio.get_running_loop().time() + self._deadline_s
            try:
                async with asyncio.timeout_at(deadline):
                    return exchange, await self._attempts(exchange, key, deadline)
            except TimeoutError:
                exchange.fail("timeout", f"no answer within the call's {self._deadline_s:g} s")
                return exchange, None

    async def _refusal(self, endpoint: JudgeEndpoint) -> str | None:
        """Why a user-given URL may not be called: checked before a slot is taken or anything
        is sent (attempts stays 0), and again by each attempt at the address it goes to."""
        if endpoint.vetted:
            return None
        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                await egress.vet(endpoint.base_url, self._allow, self._resolve)
        except egress.EgressRefused as refused:
            return str(refused)
        except TimeoutError:
            return "the base URL's host did not resolve in time"
        return None

    async def _attempts(
        self, exchange: _Exchange, key: tuple[str, str], deadline: float
    ) -> str | None:
        """The answer's message content, or None with `exchange.error` set."""
        url = exchange.endpoint.base_url.rstrip("/") + API_ENDPOINT
        retries = 0
        while True:
            retry = await self._attempt(exchange, key, url, deadline)
            if retry is None:
                return exchange.content
            if retry is _FALLBACK:
                continue
            retries += 1
            wait = self._wait(retries, retry, deadline)
            if isinstance(wait, tuple):
                exchange.fail(*wait)
                return None
            exchange.retry_reason = retry.reason
            log.info(
                "judge endpoint %s: %s (attempt %d of %d); retrying in %.2f s",
                public_url(exchange.endpoint.base_url),
                retry.reason,
                retries,
                self._max_attempts,
                wait,
            )
            await self._sleep(wait)

    async def _attempt(
        self, exchange: _Exchange, key: tuple[str, str], url: str, deadline: float
    ) -> _Retry | None:
        """One request: None when the call is over (answered or failed), else what to retry."""
        fmt = self._formats.get(key, 0)
        exchange.response_format = FORMATS[fmt]
        exchange.attempts += 1
        left = deadline - asyncio.get_running_loop().time()
        body = _body(exchange.endpoint.model, exchange.prompt, FORMATS[fmt])
        try:
            response = await self._post(
                exchange.endpoint, url, body, max(0.001, min(left, self._attempt_timeout_s))
            )
        except egress.EgressRefused as refused:
            exchange.fail("refused_url", str(refused))
            return None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            exchange.fail("refused_url", "the base URL is not an http:// or https:// URL")
            return None
        except httpx.TimeoutException:
            return _Retry("timeout", "timeout", "the endpoint did not answer in time")
        except httpx.TransportError as error:
            detail = f"could not reach the endpoint ({type(error).__name__})"
            return _Retry("unreachable", "network", detail)
        exchange.http_status = response.status_code
        exchange.request_id = response.headers.get("x-request-id")
        if response.is_success:
            _read_answer(exchange, response)
            return None
        if response.status_code == 400 and fmt + 1 < len(FORMATS) and _refuses_format(response):
            self._formats[key] = fmt + 1
            log.info(
                "judge endpoint %s refused response_format %s; asking with %s from now on",
                public_url(exchange.endpoint.base_url),
                FORMATS[fmt],
                FORMATS[fmt + 1],
            )
            return _FALLBACK
        if (final := _final_failure(response)) is not None:
            exchange.fail(*final)
            return None
        reason = "rate_limit" if response.status_code == 429 else "server"
        detail = f"HTTP {response.status_code}: {_error_text(response)}"
        return _Retry(
            "http_error", reason, detail, retry_after(response.headers.get("Retry-After"))
        )

    def _wait(self, retries: int, retry: _Retry, deadline: float) -> float | tuple[ErrorKind, str]:
        """Seconds to wait before the next attempt, or the failure to end the call with."""
        if retries >= self._max_attempts:
            return retry.kind, f"{retry.detail} (after {retries} attempts)"
        left = deadline - asyncio.get_running_loop().time()
        if retry.hint is not None:
            if retry.hint > self._max_retry_after_s or retry.hint >= left:
                can = min(self._max_retry_after_s, max(left, 0.0))
                return "http_error", (
                    f"{retry.detail}; it asked to retry after {retry.hint:.0f} s, more than the "
                    f"{can:.0f} s this call can wait"
                )
            return retry.hint
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (retries - 1))
        wait = self._random.uniform(0, ceiling)  # full jitter
        return (retry.kind, f"{retry.detail} (no time left to retry)") if wait >= left else wait

    async def _post(
        self, endpoint: JudgeEndpoint, url: str, body: dict[str, Any], seconds: float
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        if endpoint.vetted:
            return await self._http.post(url, json=body, headers=headers, timeout=seconds)
        return await egress.send(
            self._http,
            "POST",
            url,
            allow=self._allow,
            resolve=self._resolve,
            json=body,
            headers=headers,
            timeout=seconds,
        )


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def public_url(base_url: str) -> str:
    """The base URL as it may be shown: no user info, query or fragment."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        return "(not a URL)"
    return redact.redact(str(url.copy_with(userinfo=b"", query=None, fragment=None)))


def _checked_scale(scale: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in scale)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"the scale must be two finite numbers, the first lower, not {scale!r}")
    return low, high


def _body(model: str, prompt: prompts.Prompt, fmt: ResponseFormat) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(prompt.messages)}
    if fmt == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": prompt.schema_name, "strict": True, "schema": prompt.schema},
        }
    elif fmt == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def _read_answer(exchange: _Exchange, response: httpx.Response) -> None:
    """Note the content, usage and model of a 200 answer, or why it has no content."""
    key = exchange.endpoint.api_key
    try:
        body = response.json()
    except ValueError:
        exchange.fail("unparseable", f"the endpoint's answer is not JSON: {_snippet(response)}")
        return
    if not isinstance(body, dict):
        exchange.fail("unparseable", "the endpoint's answer is not a chat completion")
        return
    if isinstance(model := body.get("model"), str):
        exchange.answered_model = _mask(model, key)[:200]
    exchange.usage = _usage(body.get("usage"))
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        # The key's literal only (JSON stays JSON); the kept copy gets every mask.
        exchange.content = content.replace(key, "[REDACTED]") if key else content
        exchange.answer = _mask(content, key)
        return
    refusal = message.get("refusal") if isinstance(message, dict) else None
    if isinstance(refusal, str) and refusal:
        exchange.fail("unparseable", f"the model refused: {answers.quote(refusal)}")
    else:
        exchange.fail("unparseable", "the endpoint's answer has no message content")


def _usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()

    def count(name: str) -> int | None:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Usage(count("prompt_tokens"), count("completion_tokens"), count("total_tokens"))


def _refuses_format(response: httpx.Response) -> bool:
    text = response.text.lower()
    return "response_format" in text or "json_schema" in text or "json_object" in text


def _final_failure(response: httpx.Response) -> tuple[ErrorKind, str] | None:
    """The failure a non-retryable answer ends the call with; None for 429 and 5xx."""
    status = response.status_code
    if response.is_redirect:
        return "refused_url", (
            f"the endpoint answered with a redirect ({status}), which is not followed: give "
            "the endpoint's final URL"
        )
    if status == 429 or status >= 500:
        return None
    return "http_error", f"HTTP {status}: {_error_text(response)}"


def _error_text(response: httpx.Response) -> str:
    """OpenAI's error message when the answer has one, else a short quote of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return answers.quote(error["message"], ERROR_QUOTE_CHARS)
    return _snippet(response)


def _snippet(response: httpx.Response) -> str:
    return answers.quote(response.text, ERROR_QUOTE_CHARS) if response.content else "(empty)"


def _mask(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[REDACTED]")
    return redact.redact(text)


def _judged(call: JudgeCall) -> dict[str, Any]:
    """The fields every result copies from its call."""
    return {
        "error": call.error,
        "error_detail": call.error_detail,
        "attempts": call.attempts,
        "latency_ms": call.latency_ms,
        "input_tokens": call.usage.input_tokens,
        "output_tokens": call.usage.output_tokens,
        "model": call.answered_model,
        "call": call,
    }


def _groundedness(found: list[Claim], prompt: prompts.Prompt, call: JudgeCall) -> Groundedness:
    if not found:
        return Groundedness(
            score=None,
            claims=[],
            reason="the judge found no factual claim in the answer: nothing to check",
            truncated=prompt.truncated,
        )
    supported = sum(claim.supported for claim in found)
    return Groundedness(
        score=supported / len(found),
        claims=found,
        reason=(
            f"{supported} of {len(found)} claims supported by the context, as judged by "
            f"{call.answered_model or call.model}"
        ),
        truncated=prompt.truncated,
    )
