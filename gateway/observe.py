"""ASGI middleware: request id, security headers, one access-log line and metrics per request.

Lines and metrics name the route template ("/v1/dataset-downloads/{token}"), never the raw path,
which for downloads carries the token.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import service_error_response
from services.common import context
from services.common.errors import internal

log = logging.getLogger("tunelab.http")

ROUTE_KEY = "tunelab.route"

HTTP_REQUESTS = Counter(
    "tunelab_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "tunelab_http_request_seconds",
    "Time to the end of the response body.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600),
)

# Polled every few seconds by orchestrators: logged only at DEBUG.
_PROBES = {"/healthz", "/readyz", "/metrics"}

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = context.accept_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        context.request_id.set(rid)
        context.caller.set("")
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    *_SECURITY_HEADERS,
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Whatever escaped a handler: logged in full here, answered as JSON with the request
            # id and nothing of the exception (if the response has not begun; else cut short).
            log.exception("unhandled error", extra={"method": scope["method"]})
            if started_response:
                raise
            await service_error_response(internal(rid, "gateway"))(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get(ROUTE_KEY, "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_SECONDS.labels(scope["method"], route).observe(seconds)
            log.log(
                logging.DEBUG if route in _PROBES else logging.INFO,
                "http",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                },
            )
