"""Abuse limits, each answered 429 with Retry-After and the JSON error body.

* Public routes (a download by token, the pod's report and output routes: no login, so the
  client's address is all there is to go by): a rate per client address and route, and a much
  lower one for the requests refused there (401, 403, 404: a token that is wrong, used up or
  guessed). Pods behind one address (a NAT) can report as often as they like with their
  valid tokens; whoever tries token after token is stopped after a few.
* Expensive routes (exports, analytics, watches): a rate per user and route, and a cap on the
  streams (watches, exports, output downloads) a user holds open at once.

Counted in this process's memory (the `limits` package's sliding-window counter: one pair of
counters per key, expired as it goes): with several gateway replicas each one counts its own
share, so the effective limit is the setting times the replicas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import grpc
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import error_response
from services.common import context

Endpoint = Callable[[Request], Awaitable[Response]]
STREAM_RETRY_SECONDS = 5


# What a public route answers to a token that does not let its holder in.
REFUSALS = {401, 403, 404}


class Limits:
    def __init__(
        self, public_rate: str, refused_rate: str, user_rate: str, max_streams_per_user: int
    ) -> None:
        self._public = _rate(public_rate, "public_rate_limit")
        self._refused = _rate(refused_rate, "public_refused_rate_limit")
        self._user = _rate(user_rate, "user_rate_limit")
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._max_streams = max_streams_per_user
        self._streams: dict[str, int] = {}

    def public(self, route: str, endpoint: Endpoint) -> Endpoint:
        """`endpoint`, rate-limited per client address."""

        async def run(request: Request) -> Response:
            client = request.client.host if request.client else "unknown"
            if not await self._limiter.test(self._refused, "refused", client):
                return await self._refusal(self._refused, "refused", client)
            refused = await self._hit(self._public, "public", route, client)
            if refused is not None:
                return refused
            response = await endpoint(request)
            if response.status_code in REFUSALS:
                await self._limiter.hit(self._refused, "refused", client)
            return response

        return run

    def expensive(self, route: str, endpoint: Endpoint, *, stream: bool) -> Endpoint:
        """`endpoint`, rate-limited per user; a `stream` also takes one of the user's slots
        for as long as its response lasts."""

        async def run(request: Request) -> Response:
            user = context.caller.get()
            refused = await self._hit(self._user, "user", route, user)
            if refused is not None:
                return refused
            if not stream:
                return await endpoint(request)
            if self._streams.get(user, 0) >= self._max_streams:
                return _too_many(
                    f"you have {self._max_streams} streams open (watches, exports, downloads "
                    "of outputs): close one first",
                    STREAM_RETRY_SECONDS,
                )
            self._streams[user] = self._streams.get(user, 0) + 1
            try:
                response = await endpoint(request)
            except BaseException:
                self._release(user)
                raise
            return _Holding(response, lambda: self._release(user))

        return run

    async def _hit(self, item: RateLimitItem, kind: str, route: str, who: str) -> Response | None:
        if await self._limiter.hit(item, kind, route, who):
            return None
        return await self._refusal(item, kind, route, who)

    async def _refusal(self, item: RateLimitItem, *identifiers: str) -> Response:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        what = "refused requests" if identifiers[0] == "refused" else "requests on this route"
        return _too_many(f"more than {item} {what}; retry in {wait} s", wait)

    def _release(self, user: str) -> None:
        left = self._streams.get(user, 0) - 1
        if left > 0:
            self._streams[user] = left
        else:
            self._streams.pop(user, None)


class _Holding(Response):
    """A response that gives its user's stream slot back once it has ended, however it ends
    (done, client gone, cancelled)."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            self._release()


def _rate(text: str, setting: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError as exc:
        raise SystemExit(f"gateway: {setting} {text!r} is not a rate such as 300/minute") from exc


def _too_many(message: str, retry_after: int) -> Response:
    return error_response(
        429,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        reason="RATE_LIMITED",
        headers={"Retry-After": str(retry_after)},
    )
