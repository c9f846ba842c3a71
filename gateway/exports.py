"""GET /v1/traces/export?format=csv|json|jsonl&<filters>: the file, streamed from
TracingService.ExportSpans as the service writes it (memory flat however many spans).

The first chunk is awaited before the response starts, so that a refusal (a bad filter) is an
ordinary HTTP error; a failure after that cuts the transfer short (the file is incomplete and
the client sees the connection end early, as with any interrupted download).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.bodies import Refusal
from gateway.errors import from_rpc_error
from gateway.rules import HttpRule
from gateway.transcode import Endpoint, build_request, query_fields, server_stream

# ExportFormat number: (media type, file extension); 0 is the default, JSONL.
FORMATS = {
    0: ("application/x-ndjson", "jsonl"),
    1: ("text/csv; charset=utf-8", "csv"),
    2: ("application/json", "json"),
    3: ("application/x-ndjson", "jsonl"),
}


def export_endpoint(
    rule: HttpRule, channel: grpc.aio.Channel, service: str, timeout: float
) -> Endpoint:
    """`timeout`: the export's deadline (hours: a large export over a slow link takes long)."""
    request_type, call_kind = server_stream(rule, channel)
    query = query_fields(rule)

    async def endpoint(request: Request) -> Response:
        try:
            message: Any = await build_request(request, rule, request_type, query)
        except Refusal as exc:
            return exc.response()
        call = call_kind(message, timeout=timeout)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, service)
        media_type, extension = FORMATS.get(message.format, FORMATS[0])

        async def body() -> AsyncIterator[bytes]:
            try:
                item: Any = first
                while item is not grpc.aio.EOF:
                    yield item.data
                    item = await call.read()
            finally:
                call.cancel()

        return StreamingResponse(
            body(),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="spans.{extension}"'},
        )

    return endpoint
