"""Presigned GETs for the local blob store: what S3 gives object storage, for a directory.

The service that owns a local store (no other process may open its directory) runs this small
HTTP listener beside its gRPC server. A URL it signs names one blob and an expiry, with an
HMAC-SHA256 signature keyed from the internal token, so every replica accepts every replica's
URLs. GET and HEAD, one byte range (`Range: bytes=a-b` or `a-`), and the body goes out with
sendfile(2): the bytes never pass through Python here. One request per connection.

It answers only what a presigned S3 URL answers: the bytes, 206/200/416, 403 for a bad or
expired signature, 404 for a missing blob. Access control, audit and headers for end users are
the caller's job (the datasets service decides; the gateway streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11

from services.common.blobstore import BlobError, BlobMissing
from services.common.blobstore.local import LocalBlobStore, OpenBlob

log = logging.getLogger(__name__)

_PATH = re.compile(r"/blobs/([0-9a-f]{32})")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_READ_TIMEOUT = 30.0
_MAX_REQUEST_BYTES = 16 * 1024


class UrlSigner:
    def __init__(self, internal_token: str) -> None:
        self._key = hmac.new(internal_token.encode(), b"tunelab blob urls", "sha256").digest()

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def path(self, key: str, expires_seconds: int) -> str:
        expires = int(time.time()) + expires_seconds
        return f"/blobs/{key}?expires={expires}&signature={self._signature(key, expires)}"

    def valid(self, key: str, expires: str, signature: str) -> bool:
        if not (expires.isascii() and expires.isdigit()) or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(key, int(expires)), signature)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    offset: int = 0
    length: int = 0  # bytes of the blob to send after the headers


class BlobServer:
    """`address` is where it listens; `public_url`, how its clients reach it (default: that
    address, with the port actually bound)."""

    def __init__(
        self, store: LocalBlobStore, internal_token: str, address: str, public_url: str = ""
    ) -> None:
        self._store = store
        self._signer = UrlSigner(internal_token)
        self._host, _, port = address.rpartition(":")
        self._port = int(port)
        self._public_url = public_url.rstrip("/")
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._connection, self._host, self._port)
        except OSError as exc:
            raise SystemExit(f"cannot serve blobs on {self._host}:{self._port}: {exc}") from exc
        if not self._public_url:
            port = self._server.sockets[0].getsockname()[1]
            self._public_url = f"http://{self._host}:{port}"

    async def url_for(self, key: str, expires_seconds: int) -> str:
        """A presigned GET URL for one blob (a coroutine, like BlobStore.presign_get)."""
        return self._public_url + self._signer.path(key, expires_seconds)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is not None:
                await self._answer(request, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # the client hung up or spoke nonsense: nobody to tell
        except Exception:
            log.exception("blob request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request: h11.Request, writer: asyncio.StreamWriter) -> None:
        method = request.method.decode()
        if method not in ("GET", "HEAD"):
            await _send(writer, _Answer(405, [("allow", "GET, HEAD")]))
            return
        target = urlsplit(request.target.decode("ascii", "replace"))
        query = parse_qs(target.query)
        match = _PATH.fullmatch(target.path)
        expires = query.get("expires", [""])[0]
        signature = query.get("signature", [""])[0]
        if match is None or not self._signer.valid(match[1], expires, signature):
            await _send(writer, _Answer(403, []))
            return
        key = match[1]
        try:
            blob = await asyncio.to_thread(self._store.open, key)
        except BlobMissing:
            await _send(writer, _Answer(404, []))
            return
        except BlobError as exc:
            log.error("blob unusable", extra={"blob_key": key, "error": str(exc)})
            await _send(writer, _Answer(500, []))
            return
        try:
            answer = _ranged(blob.size, dict(request.headers).get(b"range", b"").decode())
            await _send(writer, answer)
            if method == "GET" and answer.length:
                await _sendfile(writer, blob, answer.offset, answer.length)
        finally:
            blob.close()


async def _read_request(reader: asyncio.StreamReader) -> h11.Request | None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(_MAX_REQUEST_BYTES), _READ_TIMEOUT)
            connection.receive_data(data)  # b"" means the client closed: next_event says so
            continue
        return None  # closed before a whole request


def _ranged(size: int, header: str) -> _Answer:
    """`bytes=a-b` or `bytes=a-` gives 206 (416 past the end); no range, or any other form,
    the whole blob. The callers (the gateway, for the datasets service) send only these: the
    end-user's Range was resolved by the service that granted the download."""
    whole = _Answer(200, [("content-length", str(size))], 0, size)
    match = _RANGE.fullmatch(header.strip())
    if match is None or not match[1]:
        return whole
    start = int(match[1])
    end = min(int(match[2]) if match[2] else size - 1, size - 1)
    if start >= size:
        return _Answer(416, [("content-range", f"bytes */{size}")])
    if end < start:
        return whole
    length = end - start + 1
    headers = [("content-length", str(length)), ("content-range", f"bytes {start}-{end}/{size}")]
    return _Answer(206, headers, start, length)


async def _send(writer: asyncio.StreamWriter, answer: _Answer) -> None:
    headers = [("connection", "close"), ("accept-ranges", "bytes"), *answer.headers]
    if answer.status >= 300:
        headers.append(("content-length", "0"))
    head = f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    writer.write(head.encode("ascii"))
    await writer.drain()


async def _sendfile(writer: asyncio.StreamWriter, blob: OpenBlob, offset: int, length: int) -> None:
    with os.fdopen(os.dup(blob.fd), "rb") as file:
        sent = await asyncio.get_running_loop().sendfile(writer.transport, file, offset, length)
    if sent != length:
        raise ConnectionError(f"sent {sent} of {length} bytes")


_REASONS = {
    200: "OK",
    206: "Partial Content",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
}
