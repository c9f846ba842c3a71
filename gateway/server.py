"""The gateway's HTTP server: uvicorn, with the limits on slow and oversized requests that
uvicorn lacks.

uvicorn times out an idle keep-alive connection, but not one that is sending a request: a
client that trickles its headers a byte a second (slowloris) holds its connection, and one
of uvicorn's `limit_concurrency` slots, for as long as it likes, and may send headers without
end. Here each request's headers must be complete within `header_timeout` seconds of the
connection opening, or of the request's first byte on a kept-alive one (nginx's
client_header_timeout, Go's ReadHeaderTimeout), and be at most `max_header_bytes` long: 408 and
431 otherwise, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# File descriptors kept for what is not a client connection: gRPC channels, blob reads, logs.
RESERVED_FDS = 64


class GuardedHttpTools(HttpToolsProtocol):
    header_timeout = 10.0
    max_header_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._begun = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def data_received(self, data: bytes) -> None:
        waiting = self._header_timer is not None
        if waiting:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            waiting
            and self._header_timer is not None
            and (self._header_bytes > self.max_header_bytes)
        ):
            self._refuse(431, "Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._begun = False

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._begun:
            self._refuse(408, "Request Timeout")
        elif not self.transport.is_closing():
            self.transport.close()  # opened and sent nothing: nothing to answer

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = b'{"error": {"code": %d, "status": "%s", "message": "%s"}}' % (
            status,
            b"DEADLINE_EXCEEDED" if status == 408 else b"INVALID_ARGUMENT",
            _why(status),
        )
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, reason.encode())
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


def _why(status: int) -> bytes:
    if status == 408:
        return b"the request's headers did not arrive in time"
    return b"the request's headers are too long"


def guarded(header_timeout: float, max_header_bytes: int) -> type[GuardedHttpTools]:
    """The protocol class for uvicorn's `http=`, with these limits."""
    return type(
        "GatewayHttp",
        (GuardedHttpTools,),
        {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes},
    )


def connection_limit(wanted: int) -> int:
    """`wanted`, lowered to what the process's open-file limit leaves room for: past it,
    accept() fails with EMFILE and uvicorn can answer nobody."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft - RESERVED_FDS:
        return wanted
    allowed = max(soft - RESERVED_FDS, 16)
    log.warning(
        "the open-file limit allows fewer connections than asked",
        extra={"asked": wanted, "allowed": allowed, "nofile": soft},
    )
    return allowed
