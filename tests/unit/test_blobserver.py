"""The local store's signed blob URLs: exactly what a presigned S3 GET answers, and nothing an
unsigned, expired, tampered or borrowed URL can get at."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.common import blobserver
from services.common.blobserver import BlobServer
from services.common.blobstore import new_key
from services.common.blobstore.local import LocalBlobStore
from tests.conftest import INTERNAL_TOKEN

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
async def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.start()
    return blobs


@pytest.fixture
async def server(store: LocalBlobStore) -> AsyncIterator[BlobServer]:
    blob_server = BlobServer(store, INTERNAL_TOKEN, "127.0.0.1:0")
    await blob_server.start()
    try:
        yield blob_server
    finally:
        await blob_server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def put(store: LocalBlobStore, data: bytes) -> str:
    writer = await store.writer()
    await writer.write(data)
    return await writer.commit()


@pytest.fixture
async def key(store: LocalBlobStore) -> str:
    return await put(store, DATA)


async def test_a_signed_url_gets_the_whole_blob(
    server: BlobServer, client: httpx.AsyncClient, key: str
) -> None:
    url = await server.url_for(key, 60)
    assert url.startswith("http://127.0.0.1:")
    response = await client.get(url)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-range" not in response.headers


async def test_an_empty_blob(
    server: BlobServer, client: httpx.AsyncClient, store: LocalBlobStore
) -> None:
    empty = await put(store, b"")
    response = await client.get(await server.url_for(empty, 60))
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=0-0", 0, 0),
        ("bytes=10000-", 10000, len(DATA) - 1),
        ("bytes=10000-99999", 10000, len(DATA) - 1),  # an end past the blob's is its end
        (f"bytes={len(DATA) - 1}-", len(DATA) - 1, len(DATA) - 1),
    ],
)
async def test_ranges_get_206_with_the_right_content_range(
    server: BlobServer, client: httpx.AsyncClient, key: str, header: str, start: int, end: int
) -> None:
    response = await client.get(await server.url_for(key, 60), headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.content == DATA[start : end + 1]


@pytest.mark.parametrize("header", [f"bytes={len(DATA)}-", f"bytes={len(DATA) + 5}-99999"])
async def test_a_range_starting_past_the_end_is_416(
    server: BlobServer, client: httpx.AsyncClient, key: str, header: str
) -> None:
    response = await client.get(await server.url_for(key, 60), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    assert response.content == b""


async def test_head_gets_the_headers_only(
    server: BlobServer, client: httpx.AsyncClient, key: str
) -> None:
    url = await server.url_for(key, 60)
    whole = await client.head(url)
    assert (whole.status_code, whole.content) == (200, b"")
    assert whole.headers["content-length"] == str(len(DATA))
    part = await client.head(url, headers={"Range": "bytes=5-9"})
    assert (part.status_code, part.content) == (206, b"")
    assert part.headers["content-range"] == f"bytes 5-9/{len(DATA)}"
    # Nothing of the body followed the headers: the same client goes on with a GET.
    assert (await client.get(url)).content == DATA


async def test_an_expired_url_is_403(
    server: BlobServer, client: httpx.AsyncClient, key: str
) -> None:
    response = await client.get(await server.url_for(key, -1))
    assert (response.status_code, response.content) == (403, b"")


async def test_an_url_that_expires_later_stops_working_then(
    server: BlobServer, client: httpx.AsyncClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await server.url_for(key, 60)
    assert (await client.get(url)).status_code == 200
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert (await client.get(url)).status_code == 403


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(pair.split("=", 1) for pair in parts.query.split("&"))
    query.update(changes)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


async def test_a_tampered_or_missing_signature_is_403(
    server: BlobServer, client: httpx.AsyncClient, key: str
) -> None:
    url = await server.url_for(key, 60)
    signature = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    expires = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["expires"]
    for bad in (
        _with_query(url, signature=flipped),
        _with_query(url, signature=signature.upper()),
        _with_query(url, signature=""),
        _with_query(url, expires=str(int(expires) + 3600)),  # a longer life is not signed
        _with_query(url, expires="\u00b9\u00b2"),  # digits to isdigit(), not to int()
        urlsplit(url)._replace(query="").geturl(),
    ):
        response = await client.get(bad)
        assert (response.status_code, response.content) == (403, b""), bad


async def test_a_signature_for_another_key_is_403(
    server: BlobServer, client: httpx.AsyncClient, store: LocalBlobStore, key: str
) -> None:
    other = await put(store, b"someone else's")
    url = await server.url_for(key, 60)
    borrowed = url.replace(key, other)
    assert borrowed != url
    assert (await client.get(borrowed)).status_code == 403
    for path in ("/blobs/../objects", f"/blobs/{key}/x", f"/blobs/{key.upper()}", "/"):
        assert (await client.get(urlsplit(url)._replace(path=path).geturl())).status_code == 403


async def test_another_internal_token_signs_urls_this_server_refuses(
    store: LocalBlobStore, client: httpx.AsyncClient, server: BlobServer, key: str
) -> None:
    stranger = BlobServer(store, "another-token-" + "y" * 32, "127.0.0.1:0")
    await stranger.start()
    try:
        foreign = await stranger.url_for(key, 60)
        here = await server.url_for(key, 60)
        moved = urlsplit(here)._replace(path=urlsplit(foreign).path, query=urlsplit(foreign).query)
        assert (await client.get(moved.geturl())).status_code == 403
    finally:
        await stranger.stop()


async def test_a_missing_blob_is_404(
    server: BlobServer, client: httpx.AsyncClient, store: LocalBlobStore
) -> None:
    gone = await put(store, b"deleted soon")
    await store.delete(gone)
    for key in (gone, new_key()):
        response = await client.get(await server.url_for(key, 60))
        assert (response.status_code, response.content) == (404, b"")


async def test_a_blob_that_is_not_ours_is_refused(
    server: BlobServer, client: httpx.AsyncClient, store: LocalBlobStore, key: str, tmp_path: Path
) -> None:
    path = store.root / "objects" / key[:2] / key
    path.unlink()
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0")
    path.symlink_to(secret)
    response = await client.get(await server.url_for(key, 60))
    assert response.status_code == 500
    assert b"root" not in response.content


async def test_other_methods_are_405(
    server: BlobServer, client: httpx.AsyncClient, key: str
) -> None:
    url = await server.url_for(key, 60)
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, url, content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
    assert (await client.get(url)).content == DATA  # untouched


async def _raw(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        writer.write_eof()  # whatever was sent, that was all
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /blobs/x HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\n",  # and then the client hangs up half-way
        b"",
    ],
)
async def test_garbage_does_not_stop_the_server(
    server: BlobServer, client: httpx.AsyncClient, key: str, garbage: bytes
) -> None:
    url = await server.url_for(key, 60)
    answer = await _raw(url, garbage)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    assert (await client.get(url)).content == DATA


async def test_a_client_gone_mid_download_does_not_stop_the_server(
    server: BlobServer, client: httpx.AsyncClient, store: LocalBlobStore
) -> None:
    big = await put(store, b"x" * (8 << 20))
    url = await server.url_for(big, 60)
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # gone, with megabytes still to send
    small = await server.url_for(await put(store, b"still here"), 60)
    assert (await client.get(small)).content == b"still here"


async def test_a_silent_client_is_hung_up_on(
    server: BlobServer, client: httpx.AsyncClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobserver, "_READ_TIMEOUT", 0.2)
    url = await server.url_for(key, 60)
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(b"GET / HT")  # and nothing more, for as long as it likes
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    assert (await client.get(url)).content == DATA
