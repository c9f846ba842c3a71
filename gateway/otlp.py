"""POST /v1/traces: OTLP/HTTP, as OpenTelemetry exporters send it (binary protobuf or JSON,
optionally gzip-compressed), answered in the same encoding. The spans go on to the tracing
service's own OTLP endpoint (TraceService/Export over gRPC) with the caller's identity.

OTLP's JSON differs from protobuf's JSON mapping in one way that matters here: trace and span
ids are hex strings, not base64. They are converted before parsing (and every other rule, such
as lowerCamelCase names and enums as numbers, protobuf's parser accepts as it is).
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import error_response, from_rpc_error
from services.common import redact

ROUTE = "/v1/traces"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_BODY_BYTES = 16 * 1024 * 1024  # after decompression: a gzip bomb stops here
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_IDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class Otlp:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._export = channel.unary_unary(
            EXPORT,
            request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )

    async def __call__(self, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (PROTOBUF, JSON):
            return error_response(
                415,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"OTLP/HTTP takes {PROTOBUF} or {JSON}, not {media or 'no content type'}",
                reason="UNSUPPORTED_MEDIA_TYPE",
            )
        try:
            body = await _read(request)
            export = parse_export(body, media)
        except ValueError as exc:
            return error_response(400, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            reply = await self._export(export)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, "tracing")
        if media == PROTOBUF:
            return Response(reply.SerializeToString(), media_type=PROTOBUF)
        return Response(json_format.MessageToJson(reply, indent=None), media_type=JSON)


async def _read(request: Request) -> bytes:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ValueError(f"Content-Encoding {encoding!r} is not supported: send gzip or none")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if inflate is not None and (inflate.eof or inflate.unconsumed_tail):
            raise ValueError("the gzip body is larger than the limit, or has data after its end")
        body += inflate.decompress(chunk, MAX_BODY_BYTES + 1 - len(body)) if inflate else chunk
        if len(body) > MAX_BODY_BYTES or received > MAX_BODY_BYTES:
            raise ValueError(
                f"the request is larger than {MAX_BODY_BYTES} bytes: send smaller batches"
            )
    if inflate is not None and not inflate.eof:
        raise ValueError("the gzip body is cut short")
    if inflate is not None and inflate.unused_data:
        raise ValueError("the gzip body has data after its end")
    return bytes(body)


def parse_export(body: bytes, media: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """An OTLP/HTTP body (protobuf, or JSON with hex ids) as the request. Raises ValueError."""
    export = trace_service_pb2.ExportTraceServiceRequest()
    if media == PROTOBUF:
        try:
            export.ParseFromString(body)
        except DecodeError:
            raise ValueError("the body is not an OTLP ExportTraceServiceRequest") from None
        return export
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc.msg}") from None
    try:
        json_format.ParseDict(_ids_to_base64(data), export, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError) as exc:
        raise ValueError(
            f"the body is not an OTLP trace export: {redact.redact(str(exc))}"
        ) from None
    return export


def _ids_to_base64(value: Any, depth: int = 0) -> Any:
    """OTLP JSON's hex ids, rewritten as protobuf JSON's base64 for the bytes fields."""
    if depth > 32:
        raise ValueError("the JSON is nested too deeply")
    if isinstance(value, dict):
        return {
            key: _hex_to_base64(item)
            if key in _IDS and isinstance(item, str)
            else _ids_to_base64(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_ids_to_base64(item, depth + 1) for item in value]
    return value


def _hex_to_base64(value: str) -> str:
    if not value:
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise ValueError("an id is not hex, as OTLP JSON writes ids") from None
