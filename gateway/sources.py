"""Fetching a granted download's bytes from where the datasets service said they are.

One GET per connection, read with an asyncio BufferedProtocol: the event loop receives
straight into a buffer of `buffer_bytes`, so a fast source (the local blob listener's
sendfile, an S3 server on the same network) fills a whole megabyte per system call, where a
streaming HTTP client is handed the loop's 256 KB pieces and gathers them again. Measured
relaying 1 GiB from nginx through Starlette under uvicorn on this machine: 1.4-1.5 GB/s, against
1.1 GB/s for aiohttp's iter_any and 0.65 GB/s for its iter_chunked (the relay was CPU-bound in
each case). The response head is parsed by h11; only a body with a Content-Length is taken
(the caller checks it is exactly the granted one), so the body needs no parsing.

No proxies (these URLs are credentials), no redirects, no overall deadline (a download may take
hours) but one on connecting and on each read. Errors never carry the URL.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import h11

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


class SourceError(Exception):
    """The source did not answer with the bytes; the message is for operators and never holds
    the URL (it is a credential)."""


class _Receiver(asyncio.BufferedProtocol):
    """Receives into one buffer and queues copies of what came, pausing the socket once
    `high_water` bytes wait to be taken, so a slow client holds back a fast source."""

    def __init__(self, buffer_bytes: int, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._buffer = memoryview(bytearray(buffer_bytes))
        self._high_water = 2 * buffer_bytes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._ended: BaseException | None = None  # EOF or the connection's error
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio's: a cast, not a check.
        self.transport = cast("asyncio.Transport", transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._chunks.append(bytes(self._buffer[:nbytes]))
        self._queued += nbytes
        if self._queued >= self._high_water and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._end(EOFError("the source closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or EOFError("the source closed the connection"))

    def _end(self, why: BaseException) -> None:
        if self._ended is None:
            self._ended = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """What has arrived (at least one byte), or b"" once the source has closed; SourceError
        if nothing comes for the read timeout."""
        while not self._chunks:
            if self._ended is not None:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await self._waiter
            except TimeoutError:
                idle = self._read_timeout
                raise SourceError(f"no byte came from the source for {idle:g} s") from None
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._queued -= len(chunk)
        if self._paused and self._queued < self._high_water and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def waiting_bytes(self) -> int:
        """Received and not yet taken."""
        return self._queued

    @property
    def error(self) -> str:
        return type(self._ended).__name__ if self._ended is not None else ""

    def close(self) -> None:
        if self.transport is not None:  # closing a closed transport does nothing
            self.transport.close()


class Fetched:
    """A source's answer: its status, headers (names in lower case) and length (its
    Content-Length; None for a body without one, e.g. chunked), and its body."""

    def __init__(
        self,
        receiver: _Receiver,
        status: int,
        headers: dict[str, str],
        first: list[bytes],
    ) -> None:
        self._receiver = receiver
        self.status = status
        self.headers = headers
        stated = headers.get("content-length", "")
        chunked = "transfer-encoding" in headers
        self.length = int(stated) if stated.isdigit() and not chunked else None
        self._first = first

    async def body(self) -> AsyncIterator[bytes]:
        """Exactly `length` bytes of body, as they come (a body without a Content-Length is
        not read). SourceError if the source sends fewer (it broke off) or more (it is not
        answering what it said)."""
        if self.length is None:
            raise SourceError("the source's answer states no Content-Length")
        left = self.length
        while left > 0:
            if self._first:
                chunk = self._first.pop(0)
            elif not (chunk := await self._receiver.read()):
                raise SourceError(
                    f"the source broke off {left} bytes short ({self._receiver.error})"
                )
            left -= len(chunk)
            if left < 0:
                raise SourceError("the source sent more than its Content-Length")
            yield chunk

    @property
    def waiting_bytes(self) -> int:
        """What the gateway holds for this download: received, not yet sent on."""
        return self._receiver.waiting_bytes

    def close(self) -> None:
        self._receiver.close()


class Sources:
    """Opens one connection per download (the blob listener answers one request per connection,
    and a TCP or TLS handshake is nothing beside a dataset's transfer)."""

    def __init__(
        self,
        buffer_bytes: int = 1 << 20,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._buffer_bytes = buffer_bytes
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:  # made on first use: loading the system's CAs takes a while
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def get(self, url: str, headers: dict[str, str]) -> Fetched:
        """GET `url` with `headers`, up to the end of the response head."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"not an http(s) URL: {parts.scheme or '(no scheme)'}")
        secure = parts.scheme == "https"
        # Host and port only: what the Host header (which a presigned URL signs) and errors need.
        where = parts.netloc.rpartition("@")[2]
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise SourceError("the URL's port is not a number") from None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, receiver = await loop.create_connection(
                    lambda: _Receiver(self._buffer_bytes, self._read_timeout),
                    parts.hostname,
                    port,
                    ssl=self._context() if secure else None,
                )
        except TimeoutError:
            raise SourceError(
                f"{where}: no connection within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise SourceError(f"{where}: {type(exc).__name__}") from None
        try:
            return await self._answer(receiver, where, parts.path, parts.query, headers)
        except BaseException:
            receiver.close()
            raise

    async def _answer(
        self, receiver: _Receiver, netloc: str, path: str, query: str, headers: dict[str, str]
    ) -> Fetched:
        assert receiver.transport is not None
        http = h11.Connection(h11.CLIENT)
        target = (path or "/") + (f"?{query}" if query else "")
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", netloc), ("Connection", "close"), *headers.items()],
        )
        receiver.transport.write(http.send(request) + (http.send(h11.EndOfMessage()) or b""))
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                raise SourceError(f"{netloc}: not an HTTP answer ({exc})") from None
            if event is h11.NEED_DATA:
                http.receive_data(await receiver.read())
            elif isinstance(event, h11.Response):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise SourceError(f"{netloc}: closed before answering")
            # an InformationalResponse (1xx) is skipped
        answer_headers = {
            name.decode().lower(): value.decode("latin-1") for name, value in event.headers
        }
        # What of the body came with the head, from h11's buffer; the rest is read raw.
        first: list[bytes] = []
        try:
            while isinstance(more := http.next_event(), h11.Data):
                first.append(bytes(more.data))
        except h11.RemoteProtocolError as exc:
            raise SourceError(f"{netloc}: not an HTTP answer ({exc})") from None
        return Fetched(receiver, event.status_code, answer_headers, first)
