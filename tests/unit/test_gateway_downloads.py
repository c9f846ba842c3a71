"""The gateway streams a granted download from the source URL the datasets service granted: it
asks for exactly the granted bytes, refuses a source that answers anything else (503, to retry),
cuts the client's response short when the source breaks off, and reports what it sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import DOWNLOAD_ROUTE
from gateway.downloads import Downloads
from gateway.sources import SourceError, Sources
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

DATA = bytes(range(256)) * 64  # 16 KiB
SHA256 = "ab" * 32

# What the source does with one request: given the request's head, write the answer.
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class FakeDatasets:
    """RedeemDownloadToken grants every request; FinishDownload reports are recorded."""

    def __init__(self, source_url: str) -> None:
        self.source_url = source_url
        self.finished: list[tuple[str, int]] = []

    async def RedeemDownloadToken(
        self, request: api.RedeemDownloadTokenRequest, **_: Any
    ) -> api.RedeemDownloadTokenResponse:
        offset, length, partial = 0, len(DATA), False
        if request.range == "bytes=100-199":
            offset, length, partial = 100, 100, True
        return api.RedeemDownloadTokenResponse(
            dataset_id="ds_1",
            name="train.jsonl",
            size_bytes=len(DATA),
            sha256=SHA256,
            offset=offset,
            length=length,
            partial=partial,
            source_url="" if request.http_method == "HEAD" else self.source_url,
            grant_id="" if request.http_method == "HEAD" else "de_1",
            etag=f'"{SHA256}"',
        )

    async def FinishDownload(
        self, request: api.FinishDownloadRequest, **_: Any
    ) -> api.FinishDownloadResponse:
        self.finished.append((request.grant_id, request.bytes_sent))
        return api.FinishDownloadResponse()


class Source:
    """A one-request-per-connection HTTP server whose answers the test chooses."""

    def __init__(self) -> None:
        self.answer: Answer = whole
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/blobs/x?signature=s"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            await self.answer(head, writer)
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def whole(head: bytes, writer: asyncio.StreamWriter) -> None:
    """A correct source: the whole blob, or the one range asked for."""
    if b"range: bytes=100-199" in head.lower():
        body = DATA[100:200]
        status = f"206 Partial Content\r\nContent-Range: bytes 100-199/{len(DATA)}"
    else:
        body, status = DATA, "200 OK"
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


@pytest.fixture
async def source() -> AsyncIterator[Source]:
    server = Source()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def gateway(source: Source) -> AsyncIterator[tuple[httpx.AsyncClient, FakeDatasets]]:
    datasets = FakeDatasets(await source.start())
    downloads = Downloads(
        cast("api_grpc.DatasetsServiceAsyncStub", datasets), Sources(64 * 1024, read_timeout=2)
    )

    async def endpoint(request: Request) -> Response:  # a function: Starlette's endpoint kind
        return await downloads(request)

    app = Starlette(routes=[Route(DOWNLOAD_ROUTE, endpoint, methods=["GET", "HEAD"])])
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, datasets
    finally:
        await downloads.drain()


URL = "/v1/dataset-downloads/tldl_x"


async def settled(downloads: FakeDatasets) -> list[tuple[str, int]]:
    """The reports, once the one in the background is in."""
    for _ in range(200):
        if downloads.finished:
            break
        await asyncio.sleep(0.01)
    return downloads.finished


async def test_the_granted_bytes_stream_through_and_are_reported(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source
) -> None:
    client, datasets = gateway
    response = await client.get(URL)
    assert (response.status_code, response.content) == (200, DATA)
    assert response.headers["x-checksum-sha256"] == SHA256
    assert await settled(datasets) == [("de_1", len(DATA))]
    assert b"range:" not in source.requests[0].lower()


async def test_a_partial_grant_asks_the_source_for_exactly_that_range(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source
) -> None:
    client, datasets = gateway
    response = await client.get(URL, headers={"Range": "bytes=100-199"})
    assert (response.status_code, response.content) == (206, DATA[100:200])
    assert response.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert b"range: bytes=100-199" in source.requests[0].lower()
    assert await settled(datasets) == [("de_1", 100)]


async def test_head_fetches_nothing(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source
) -> None:
    client, datasets = gateway
    response = await client.head(URL)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(DATA))
    assert source.requests == []
    assert datasets.finished == []


def _status(status: str, length: int) -> Answer:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()
            + DATA[:length]
        )
        await writer.drain()

    return answer


@pytest.mark.parametrize(
    ("status", "length"),
    [
        ("404 Not Found", 0),  # the blob is gone
        ("403 Forbidden", 0),  # the URL expired before the fetch began
        ("500 Internal Server Error", 0),
        ("200 OK", len(DATA) - 1),  # not the granted size
        ("302 Found", 0),  # no redirects are followed
    ],
)
async def test_a_source_answering_anything_else_is_a_503_that_uses_nothing(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source, status: str, length: int
) -> None:
    client, datasets = gateway
    source.answer = _status(status, length)
    response = await client.get(URL)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["reason"] == "STORAGE_UNAVAILABLE"
    assert "127.0.0.1" not in response.text  # where the bytes live is not the client's business
    assert await settled(datasets) == [("de_1", 0)]  # which gives the use back


async def test_an_unreachable_source_is_a_503_that_uses_nothing(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source
) -> None:
    client, datasets = gateway
    await source.stop()  # nothing listens there any more
    response = await client.get(URL)
    assert response.status_code == 503
    assert response.json()["error"]["reason"] == "STORAGE_UNAVAILABLE"
    assert await settled(datasets) == [("de_1", 0)]


async def test_a_source_that_breaks_off_cuts_the_download_short(
    gateway: tuple[httpx.AsyncClient, FakeDatasets], source: Source
) -> None:
    client, datasets = gateway

    async def half(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode()
            + DATA[: len(DATA) // 2]
        )
        await writer.drain()  # and hangs up

    source.answer = half
    # The client must see that it did not get everything: the response breaks off (here the
    # app fails mid-body; under a server, the connection closes short of Content-Length).
    with pytest.raises(SourceError):
        await client.get(URL)
    [(grant, sent)] = await settled(datasets)
    assert grant == "de_1"
    assert 0 < sent < len(DATA)
