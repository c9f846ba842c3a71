"""POST /v1/traces: OTLP/HTTP, as OpenTelemetry exporters send it (binary protobuf or JSON,
optionally gzip-compressed), answered in the same encoding. The spans go on to the tracing
service's own OTLP endpoint (TraceService/Export over gRPC) with the caller's identity.

OTLP's JSON differs from protobuf's JSON mapping in one way that matters here: trace and span
ids are hex strings, not base64. They are converted before parsing (and every other rule, such
as lowerCamelCase names and enums as numbers, protobuf's parser accepts as it is).
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from starlette.requests import Request
from starlette.responses import Response

from gateway.bodies import Refusal, media_type, read_body, unsupported
from gateway.errors import error_response, from_rpc_error
from services.common import redact

ROUTE = "/v1/traces"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_BODY_BYTES = 16 * 1024 * 1024  # either side of decompression
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
        media = media_type(request)
        if media not in (PROTOBUF, JSON):
            return unsupported(
                f"OTLP/HTTP takes {PROTOBUF} or {JSON}, not {media or 'no content type'}"
            )
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except Refusal as exc:
            return exc.response()
        try:
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
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object: an ExportTraceServiceRequest")
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
