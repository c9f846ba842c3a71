"""The gateway's HTTP server limits, against a real uvicorn on a free port: headers that trickle
in are cut off at the deadline, overlong ones refused, and ordinary clients never notice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.server import guarded
from tests.e2e.conftest import free_port

TIMEOUT = 0.6


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/", hello)]),
        host="127.0.0.1",
        port=port,
        http=guarded(TIMEOUT, 4096),
        log_config=None,
        lifespan="off",
        timeout_keep_alive=5,
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    yield port
    running.should_exit = True
    await task


async def answer(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection."""
    return await asyncio.wait_for(reader.read(), 5)


async def test_headers_that_trickle_in_are_cut_off_with_408(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    started = time.monotonic()
    # A byte every tenth of the deadline, for most of it: the connection is never idle.
    for byte in b"GET / HT":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TIMEOUT / 10)
    reply = await answer(reader)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b'"DEADLINE_EXCEEDED"' in reply
    assert time.monotonic() - started < TIMEOUT * 3
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    started = time.monotonic()
    assert await answer(reader) == b""
    assert TIMEOUT * 0.8 < time.monotonic() - started < TIMEOUT * 3
    writer.close()


async def test_overlong_headers_are_refused_with_431(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 8192 + b"\r\n")
    await writer.drain()
    assert (await answer(reader)).startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_ordinary_clients_and_kept_alive_connections_are_served(server: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}") as client:
        assert (await client.get("/")).text == "hello"
        await asyncio.sleep(TIMEOUT * 1.5)  # idle past the header deadline, within keep-alive
        assert (await client.get("/")).text == "hello"  # the same connection, a new request
    # Slow clients do not hold up others: the event loop serves everyone meanwhile.
    slow = [await asyncio.open_connection("127.0.0.1", server) for _ in range(50)]
    for _, writer in slow:
        writer.write(b"GET / HT")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}") as client:
        started = time.monotonic()
        assert (await client.get("/")).status_code == 200
        assert time.monotonic() - started < TIMEOUT
    for reader, writer in slow:
        assert (await answer(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
