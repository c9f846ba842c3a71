"""Generic HTTP/JSON to gRPC transcoding for unary methods, driven by their google.api.http rules.

Path parameters, query parameters and the JSON body (per the rule's `body`) fill the request
message through protobuf's JSON mapping; the reply (or its `response_body` field) is returned as
JSON with the proto field names. Status: 201 for Create methods, 204 when the reply is empty.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.bodies import Refusal, check_json_type, read_body
from gateway.errors import error_response, from_rpc_error, service_error_response
from gateway.rules import HttpRule
from services.common import enum_names as enums
from services.common import redact
from services.common.errors import unauthenticated

MAX_JSON_BODY = 1 << 20
# Bodies that are batches of data, not requests: as large as a gRPC message may be.
LARGE_BODIES = {"IngestSpans": 16 << 20}
# Request fields filled from headers, never from the query string (a token in a URL ends up in
# logs): the idempotency key, and for routes whose credential is a token of the service's own
# (the pod's job token) the Authorization header's bearer token.
IDEMPOTENCY_FIELD = "request_id"
BEARER_FIELDS = {"ReportDeployment": "job_token", "AppendDeploymentLogs": "job_token"}
ASK_FOR_JOB_CREDENTIAL = "send the run's job token: Authorization: Bearer tljb_..."
# A request message field whose own fields are query parameters of their own (?model=x rather
# than ?filter.model=x): list filters.
FLATTENED = "filter"
# Server streams whose messages are the bytes of a file: the HTTP body is that file.
BYTE_STREAMS = {"ExportSpans"}

Endpoint = Callable[[Request], Awaitable[Response]]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(Refusal):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(
            error_response(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                message,
                reason="INVALID_ARGUMENT",
                metadata={"field": field} if field else None,
            )
        )
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


def to_json(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return enums.shorten(cast(Descriptor, message.DESCRIPTOR), data)


def success_status(rule: HttpRule) -> int:
    if rule.method.name.startswith("Create"):
        return 201
    if not rule.method.output_type.fields:
        return 204
    return 200


def unary_endpoint(
    rule: HttpRule, channel: grpc.aio.Channel, service: str, timeout: float | None = None
) -> Endpoint:
    """`timeout`: the call's deadline, when not the channel's default for unary calls."""
    request_type = message_factory.GetMessageClass(rule.method.input_type)
    response_type = message_factory.GetMessageClass(rule.method.output_type)
    call = channel.unary_unary(
        rule.rpc_path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    status = success_status(rule)
    query = query_fields(rule)
    bearer_field = BEARER_FIELDS.get(rule.method.name, "")

    async def endpoint(request: Request) -> Response:
        if bearer_field and not bearer_token(request):
            return service_error_response(unauthenticated(ASK_FOR_JOB_CREDENTIAL))
        try:
            message = await build_request(request, rule, request_type, query, bearer_field)
        except Refusal as exc:
            if bearer_field:
                return await _refusal_for_stranger(call, request, rule, bearer_field, exc, service)
            return exc.response()
        try:
            reply = await call(message, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, service)
        if status == 204:
            return Response(status_code=204)
        payload = getattr(reply, rule.response_body) if rule.response_body else reply
        return JSONResponse(to_json(payload), status_code=status)

    return endpoint


async def _refusal_for_stranger(
    call: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
    request: Request,
    rule: HttpRule,
    bearer_field: str,
    refusal: Refusal,
    service: str,
) -> Response:
    """A malformed body on a route whose credential only the service can check: the token is
    checked first (the same call with no body, which the service refuses without writing
    anything), so that a caller without a valid token learns nothing about the body."""
    probe = message_factory.GetMessageClass(rule.method.input_type)()
    for name in rule.path_params:
        setattr(probe, name, request.path_params[name])
    setattr(probe, bearer_field, bearer_token(request))
    try:
        await call(probe)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
            return from_rpc_error(exc, service)
    return refusal.response()


def server_stream(
    rule: HttpRule, channel: grpc.aio.Channel
) -> tuple[type[Message], grpc.aio.UnaryStreamMultiCallable[Any, Any]]:
    """A server-streaming method's request class and its call, for the hand-made routes."""
    request_type = message_factory.GetMessageClass(rule.method.input_type)
    response_type = message_factory.GetMessageClass(rule.method.output_type)
    call = channel.unary_stream(
        rule.rpc_path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return request_type, call


def query_fields(rule: HttpRule) -> dict[str, FieldDescriptor]:
    """Scalar request fields (timestamps included) that the path and the body leave to the
    query string; the fields of a `filter` message are query parameters of their own."""
    if rule.body == "*":
        return {}
    taken = {*rule.path_params, rule.body, IDEMPOTENCY_FIELD}
    taken.add(BEARER_FIELDS.get(rule.method.name, ""))
    found: dict[str, FieldDescriptor] = {}
    for field in rule.method.input_type.fields:
        if field.name in taken:
            continue
        if _query_scalar(field):
            found[field.name] = field
        elif field.name == FLATTENED and field.message_type is not None:
            found.update({f.name: f for f in field.message_type.fields if _query_scalar(f)})
    return found


def _query_scalar(field: FieldDescriptor) -> bool:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return True
    return field.message_type is not None and (
        field.message_type.full_name == "google.protobuf.Timestamp"
    )


async def read_json_body(request: Request, limit: int = MAX_JSON_BODY) -> Any:
    """The body as JSON, gzip-compressed or not; an empty body is an empty object."""
    check_json_type(request)
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at character {exc.pos}") from exc


def bearer_token(request: Request) -> str:
    """The Authorization header's bearer token; empty when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _text(key: str, value: str) -> str:
    """A path or query value: control characters are never part of a name, id or filter."""
    if _CONTROL.search(value):
        raise BadRequest(f"{key!r} holds a control character", key)
    return value


def _boolean(key: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {key!r} is true or false", key)


def _by_json_name(rule: HttpRule, key: str) -> FieldDescriptor | None:
    """protobuf's JSON mapping also accepts lowerCamelCase names (maxUses for max_uses)."""
    return next((f for f in rule.method.input_type.fields if f.json_name == key), None)


async def build_request(
    request: Request,
    rule: HttpRule,
    request_type: type[Message],
    query: dict[str, FieldDescriptor],
    bearer_field: str = "",
) -> Message:
    data: dict[str, Any] = {}
    if rule.body:
        body = await read_json_body(request, LARGE_BODIES.get(rule.method.name, MAX_JSON_BODY))
        if rule.body == "*":
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            fields = rule.method.input_type.fields_by_name
            accepted = {name for name in fields if name not in rule.path_params}
            for key in body:
                field = fields.get(key) or _by_json_name(rule, key)
                if field is None or field.name not in accepted:
                    listed = ", ".join(sorted(accepted)) or "no fields"
                    raise BadRequest(f"unknown field {key!r}; this body takes: {listed}", key)
            data.update(body)
        else:
            field = rule.method.input_type.fields_by_name[rule.body]
            if field.message_type is not None and not isinstance(body, dict):
                raise BadRequest(f"the body must be a JSON object (the {rule.body})", rule.body)
            data[rule.body] = body
    for key in request.query_params:
        field = query.get(key)
        if field is None:
            allowed = ", ".join(sorted(query)) or "none"
            raise BadRequest(f"unknown query parameter {key!r}; this route takes: {allowed}", key)
        values: list[Any] = [_text(key, v) for v in request.query_params.getlist(key)]
        if field.type == FieldDescriptor.TYPE_BOOL:
            values = [_boolean(key, value) for value in values]
        into = data
        if field.containing_type is not None and (
            field.containing_type.full_name != rule.method.input_type.full_name
        ):
            into = data.setdefault(FLATTENED, {})
        if field.is_repeated:
            into[key] = values
        elif len(values) > 1:
            raise BadRequest(f"query parameter {key!r} is given more than once", key)
        else:
            into[key] = values[0]
    for name in rule.path_params:
        data[name] = _text(name, request.path_params[name])
    fields = rule.method.input_type.fields_by_name
    if IDEMPOTENCY_FIELD in fields and (key := request.headers.get("idempotency-key")) is not None:
        data[IDEMPOTENCY_FIELD] = key
    if bearer_field:
        data[bearer_field] = bearer_token(request)
    enums.expand(rule.method.input_type, data)
    message = request_type()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise BadRequest(f"invalid request: {redact.redact(str(exc))}") from exc
    return message
