"""Server-streaming methods as server-sent events (WatchDeployment's live progress).

The first message is awaited before the response starts, so that an error such as NOT_FOUND is
an ordinary HTTP error; after that each message is one `data:` event, a comment line keeps idle
connections (and the proxies on the way) open, and a mid-stream error is a final `error` event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import from_rpc_error
from gateway.rules import HttpRule
from gateway.transcode import (
    BadRequest,
    Endpoint,
    build_request,
    query_fields,
    server_stream,
    to_json,
)

KEEPALIVE_SECONDS = 15.0
_DONE = object()


def sse_endpoint(rule: HttpRule, channel: grpc.aio.Channel, service: str) -> Endpoint:
    request_type, call_kind = server_stream(rule, channel)
    query = query_fields(rule)

    async def endpoint(request: Request) -> Response:
        try:
            message = await build_request(request, rule, request_type, query)
        except BadRequest as exc:
            return exc.response()
        # No deadline: a watch lasts as long as the run (the client's own deadline is none).
        call = call_kind(message, timeout=None)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, service)
        return StreamingResponse(
            _events(call, first, service),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return endpoint


async def _events(call: Any, first: Any, service: str) -> AsyncIterator[bytes]:
    # Bounded: a slow reader holds the stream back (gRPC flow control), not our memory.
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)

    async def pump() -> None:
        try:
            while (item := await call.read()) is not grpc.aio.EOF:
                await queue.put(item)
            await queue.put(_DONE)
        except grpc.aio.AioRpcError as exc:
            await queue.put(exc)

    reader = asyncio.create_task(pump())
    try:
        item: Any = first
        while item is not grpc.aio.EOF and item is not _DONE:
            if isinstance(item, grpc.aio.AioRpcError):
                yield _frame("error", orjson.loads(from_rpc_error(item, service).body))
                return
            if isinstance(item, Message):
                yield _frame("message", to_json(item))
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keepalive\n\n"
                item = None
    finally:
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
