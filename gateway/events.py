"""Server-streaming methods as server-sent events (a watch's live progress, a run's log lines).

The first message is awaited before the response starts, so that an error such as NOT_FOUND is
an ordinary HTTP error; after that each message is one `data:` event, a comment line keeps idle
connections (and the proxies on the way) open, and a mid-stream error is a final `error` event.

A watch (and a log) is resumable: each frame that carries events (log lines) has the last one's
sequence as its SSE `id`, and a reconnecting client's `Last-Event-ID` (what a browser's
EventSource sends by itself) is the request's `after_sequence`. So a stream that reaches its
deadline simply ends, as the service's own limit ends it, and the client carries on from where
it was.
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

from gateway.bodies import Refusal
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


# Per method: the request field a reconnecting client's Last-Event-ID fills, and the reply's
# list whose items carry the sequence numbers.
RESUME_FIELDS = {
    "WatchDeployment": ("after_sequence", "events"),
    "StreamDeploymentLogs": ("after_sequence", "lines"),
}


def sse_endpoint(
    rule: HttpRule, channel: grpc.aio.Channel, service: str, timeout: float
) -> Endpoint:
    """`timeout`: the stream's deadline, sized to it (a watch: past the service's own limit)."""
    request_type, call_kind = server_stream(rule, channel)
    query = query_fields(rule)
    resume_field, sequenced = RESUME_FIELDS.get(rule.method.name, ("", ""))

    async def endpoint(request: Request) -> Response:
        try:
            message: Any = await build_request(request, rule, request_type, query)
            if resume_field:
                _resume(message, resume_field, request.headers.get("last-event-id", ""))
        except Refusal as exc:
            return exc.response()
        call = call_kind(message, timeout=timeout)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, service)
        return StreamingResponse(
            _events(call, first, service, sequenced),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return endpoint


async def _events(call: Any, first: Any, service: str, sequenced: str) -> AsyncIterator[bytes]:
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
                if item.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    return  # the stream's time is up, not an error: the client resumes
                yield _frame("error", orjson.loads(from_rpc_error(item, service).body))
                return
            if isinstance(item, Message):
                yield _frame("message", to_json(item), _event_id(item, sequenced))
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


def _resume(message: Any, field: str, last_event_id: str) -> None:
    """A reconnecting EventSource's Last-Event-ID, unless the query already says where."""
    if not last_event_id or getattr(message, field):
        return
    if not last_event_id.isdigit() or int(last_event_id) >= 2**31:
        raise BadRequest("Last-Event-ID is the sequence number of an event", "Last-Event-ID")
    setattr(message, field, int(last_event_id))


def _event_id(message: Message, sequenced: str) -> str:
    """The sequence of the last item (event, log line) a message carries ('' when none)."""
    items = getattr(message, sequenced, None) if sequenced else None
    if not items:
        return ""
    return str(items[-1].sequence)


def _frame(event: str, data: dict[str, Any], event_id: str = "") -> bytes:
    head = b"id: " + event_id.encode() + b"\n" if event_id else b""
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
