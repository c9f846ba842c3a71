"""OpenTelemetry (OTLP) traces in: the collector's TraceService on the tracing server.

Producers instrumented with OpenTelemetry export to the tracing service as to any collector.
Each OTLP span becomes one of our spans: ids as lower-case hex, times, status, and the
attributes of the GenAI semantic conventions (gen_ai.*) and of OpenInference (llm.*, input.*,
output.*, ...) mapped onto their fields. Every attribute without a field of its own, and the
resource's and the scope's, lands in `metadata` under its own key. The spans then go through
TracingServicer._ingest like any others: checked, merged, completed (duration, cost) and
sanitized before they are stored.

Spans that cannot be taken (no ids) or that the service refuses are counted in the answer's
`partial_success`, as the OTLP specification asks; the rest are kept.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from google.protobuf import json_format, struct_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_api
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from services.common.identity import require_user
from services.common.sanitize import sanitize_text
from services.tracing.server import TracingServicer
from tunelab.tracing.v1 import spans_pb2 as pb

SERVICE_NAME = otlp_api.DESCRIPTOR.services_by_name["TraceService"].full_name
# How many problems the partial_success message spells out.
MAX_REASONS = 5
# OTLP ids are 16 (trace) and 8 (span) bytes; ours hold up to 64 characters.
MAX_ID_BYTES = 32
# JSON nesting kept in input/output/metadata: each level is two protobuf levels (Value and
# Struct/ListValue), inside the Span, and protobuf parses at most 100.
MAX_JSON_DEPTH = 40

Context = grpc.aio.ServicerContext[object, object]

_OPENINFERENCE_KINDS = {
    "LLM": pb.SPAN_KIND_LLM,
    "EMBEDDING": pb.SPAN_KIND_EMBEDDING,
    "RETRIEVER": pb.SPAN_KIND_RETRIEVAL,
    "RERANKER": pb.SPAN_KIND_RERANK,
    "TOOL": pb.SPAN_KIND_TOOL,
    "CHAIN": pb.SPAN_KIND_CHAIN,
    "AGENT": pb.SPAN_KIND_AGENT,
    "GUARDRAIL": pb.SPAN_KIND_GUARDRAIL,
}
_GENAI_OPERATIONS = {
    "chat": pb.SPAN_KIND_LLM,
    "text_completion": pb.SPAN_KIND_LLM,
    "generate_content": pb.SPAN_KIND_LLM,
    "embeddings": pb.SPAN_KIND_EMBEDDING,
    "retrieval": pb.SPAN_KIND_RETRIEVAL,
    "execute_tool": pb.SPAN_KIND_TOOL,
    "invoke_agent": pb.SPAN_KIND_AGENT,
    "create_agent": pb.SPAN_KIND_AGENT,
    "invoke_workflow": pb.SPAN_KIND_CHAIN,
}
# OpenLLMetry (Traceloop) span kinds.
_TRACELOOP_KINDS = {
    "workflow": pb.SPAN_KIND_CHAIN,
    "task": pb.SPAN_KIND_CHAIN,
    "agent": pb.SPAN_KIND_AGENT,
    "tool": pb.SPAN_KIND_TOOL,
}
# Lists that OpenInference and OpenLLMetry flatten into attributes ("llm.input_messages.0.
# message.role"): gathered back into a list of objects, the item's own prefix dropped.
_FLATTENED = {
    "llm.input_messages": "message.",
    "llm.output_messages": "message.",
    "retrieval.documents": "document.",
    "reranker.input_documents": "document.",
    "reranker.output_documents": "document.",
    "embedding.embeddings": "embedding.",
    "llm.tools": "tool.",
    "gen_ai.prompt": "",
    "gen_ai.completion": "",
}
_HEADER_PREFIX = "http.request.header."
# Our short texts, cut to what the columns hold rather than refusing the span.
_NAME, _MODEL, _PROVIDER, _CATEGORY, _SHORT = 255, 255, 64, 64, 255
_MAX_TAGS, _MAX_TAG = 32, 128


def spans_from_otlp(
    request: otlp_api.ExportTraceServiceRequest,
) -> tuple[list[pb.Span], list[str]]:
    """The request's spans as ours, and a problem for each OTLP span that cannot be one."""
    found: list[pb.Span] = []
    problems: list[str] = []
    position = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            common = {**resource, **_attributes(scope.attributes)}
            if scope.name:
                common["otel.scope.name"] = scope.name
            if scope.version:
                common["otel.scope.version"] = scope.version
            for otel_span in scope_spans.spans:
                problem = _unmappable(otel_span)
                if not problem:
                    try:
                        found.append(_span(otel_span, common))
                    except (ValueError, TypeError, json_format.Error) as exc:
                        problem = f"cannot be mapped: {exc}"[:200]
                if problem:
                    problems.append(sanitize_text(f"span #{position}: {problem}"))
                position += 1
    return found, problems


async def ingest_otlp(
    servicer: TracingServicer, owner: str, request: otlp_api.ExportTraceServiceRequest
) -> otlp_api.ExportTraceServiceResponse:
    """Map and store the request's spans for `owner`; what was refused is in partial_success."""
    found, problems = spans_from_otlp(request)
    size = servicer.settings.max_batch_spans
    for start in range(0, len(found), size):
        _, rejected = await servicer._ingest(owner, found[start : start + size], 0)
        problems.extend(
            f"span {r.trace_id}/{r.span_id}: {r.field + ': ' if r.field else ''}{r.reason}"
            for r in rejected
        )
    response = otlp_api.ExportTraceServiceResponse()
    if problems:
        shown = "; ".join(problems[:MAX_REASONS])
        more = len(problems) - MAX_REASONS
        response.partial_success.rejected_spans = len(problems)
        response.partial_success.error_message = f"{len(problems)} span(s) rejected: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
    return response


class OtlpTraceServicer(otlp_grpc.TraceServiceServicer):
    """opentelemetry.proto.collector.trace.v1.TraceService/Export, for the calling user."""

    def __init__(self, tracing: TracingServicer) -> None:
        self.tracing = tracing

    async def Export(
        self, request: otlp_api.ExportTraceServiceRequest, context: Context
    ) -> otlp_api.ExportTraceServiceResponse:
        return await ingest_otlp(self.tracing, require_user(), request)


def add_to_server(servicer: OtlpTraceServicer, server: grpc.aio.Server) -> None:
    otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


# --- one span ---------------------------------------------------------------------------------


def _unmappable(otel_span: trace_pb2.Span) -> str:
    for name, value in (("trace_id", otel_span.trace_id), ("span_id", otel_span.span_id)):
        if not any(value):
            return f"{name} is empty or all zeros"
        if len(value) > MAX_ID_BYTES:
            return f"{name} is longer than {MAX_ID_BYTES} bytes"
    if len(otel_span.parent_span_id) > MAX_ID_BYTES:
        return f"parent_span_id is longer than {MAX_ID_BYTES} bytes"
    return ""


@dataclass
class _Attrs:
    """A span's attributes as plain values, and which of them found a field of their own."""

    values: dict[str, Any]
    used: set[str] = field(default_factory=set)

    def take(self, *keys: str) -> Any:
        """The first of `keys` present (aliases of one meaning): all of them are used."""
        found = None
        for key in keys:
            if key in self.values:
                self.used.add(key)
                if found is None:
                    found = self.values[key]
        return found

    def rest(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k not in self.used}


def _span(otel_span: trace_pb2.Span, common: dict[str, Any]) -> pb.Span:
    span = pb.Span(
        trace_id=otel_span.trace_id.hex(),
        span_id=otel_span.span_id.hex(),
        parent_span_id=otel_span.parent_span_id.hex() if any(otel_span.parent_span_id) else "",
        name=otel_span.name[:_NAME],
    )
    if otel_span.start_time_unix_nano:
        span.timing.start_time.FromNanoseconds(otel_span.start_time_unix_nano)
    if otel_span.end_time_unix_nano:
        span.timing.end_time.FromNanoseconds(otel_span.end_time_unix_nano)
    if otel_span.status.code == trace_pb2.Status.STATUS_CODE_ERROR:
        span.status = pb.SPAN_STATUS_ERROR
    elif otel_span.status.code == trace_pb2.Status.STATUS_CODE_OK:
        span.status = pb.SPAN_STATUS_OK
    span.status_message = otel_span.status.message

    attrs = _Attrs(_attributes(otel_span.attributes))
    events = _Events.of(otel_span.events)
    _kind(span, attrs)
    _model(span, attrs)
    _usage(span, attrs)
    _request(span, attrs)
    _context(span, attrs)
    _content(span, attrs, events)
    if events.exception and not span.status_message:
        span.status_message = events.exception
    if events.scores:
        span.evaluation.scores.update(events.scores)

    metadata = {**common, **attrs.rest()}
    if otel_span.kind:
        metadata["otel.span_kind"] = trace_pb2.Span.SpanKind.Name(otel_span.kind).removeprefix(
            "SPAN_KIND_"
        )
    if events.other:
        metadata["otel.events"] = events.other
    if metadata:
        span.metadata.CopyFrom(_struct(metadata))
    return span


def _kind(span: pb.Span, attrs: _Attrs) -> None:
    for key, table in (
        ("openinference.span.kind", _OPENINFERENCE_KINDS),
        ("gen_ai.operation.name", _GENAI_OPERATIONS),
        ("traceloop.span.kind", _TRACELOOP_KINDS),
    ):
        value = attrs.values.get(key)
        if not isinstance(value, str):
            continue
        kind = table.get(value.upper() if table is _OPENINFERENCE_KINDS else value.lower())
        if kind is not None:
            span.kind = kind
            attrs.used.add(key)
            return


def _model(span: pb.Span, attrs: _Attrs) -> None:
    requested = _text(attrs.values.get("gen_ai.request.model"))
    model = _text(attrs.take("gen_ai.response.model", "llm.model_name", "embedding.model_name"))
    if not model or model == requested:
        model = requested or model
        attrs.take("gen_ai.request.model")
    # A request model other than the one that answered stays in metadata.
    span.model = (model or "")[:_MODEL]
    provider = _text(attrs.take("gen_ai.provider.name", "gen_ai.system", "llm.provider"))
    provider = provider or _text(attrs.take("llm.system"))
    span.provider = (provider or "").lower()[:_PROVIDER]


def _usage(span: pb.Span, attrs: _Attrs) -> None:
    usage = span.usage
    for name, keys in (
        ("input_tokens", ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                          "llm.token_count.prompt")),
        ("output_tokens", ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                           "llm.token_count.completion")),
        ("total_tokens", ("llm.token_count.total", "llm.usage.total_tokens")),
        ("cache_read_input_tokens", ("gen_ai.usage.cache_read.input_tokens",
                                     "llm.token_count.prompt_details.cache_read",
                                     "gen_ai.usage.cache_read_input_tokens")),
        ("cache_creation_input_tokens", ("gen_ai.usage.cache_creation.input_tokens",
                                         "llm.token_count.prompt_details.cache_write",
                                         "gen_ai.usage.cache_creation_input_tokens")),
    ):  # fmt: skip
        value = _integer(attrs.take(*keys))
        if value is not None:
            setattr(usage, name, value)
    costs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("total_usd", ("llm.cost.total",)),
        ("input_usd", ("llm.cost.prompt", "llm.cost.input")),
        ("output_usd", ("llm.cost.completion", "llm.cost.output")),
    )
    for name, aliases in costs:
        amount = _number(attrs.take(*aliases))
        if amount is not None:
            setattr(span.cost, name, amount)
    ttft = _number(attrs.take("gen_ai.response.time_to_first_chunk"))
    if ttft is not None:
        span.timing.time_to_first_token_ms = ttft * 1000
    stream = attrs.take("gen_ai.request.stream", "llm.is_streaming")
    if isinstance(stream, bool):
        span.streaming.enabled = stream


def _request(span: pb.Span, attrs: _Attrs) -> None:
    request = span.request
    request.provider_request_id = (_text(attrs.take("gen_ai.response.id")) or "")[:_SHORT]
    url = _text(attrs.take("url.full"))
    if url:
        scheme, sep, after = url.partition("://")
        if sep:
            host, slash, path = after.partition("/")
            request.base_url = f"{scheme}://{host}"
            request.api_endpoint = (slash + path).partition("?")[0].partition("#")[0]
        else:
            request.base_url = url
        attrs.take("server.address", "server.port", "url.scheme")
    else:
        address = _text(attrs.take("server.address"))
        port = _integer(attrs.take("server.port"))
        if address:
            # The scheme is a guess when not sent: https but on port 80.
            given = _text(attrs.take("url.scheme")) or ("http" if port == 80 else "https")
            default = {"http": 80, "https": 443}.get(given)
            request.base_url = f"{given}://{address}" + (
                f":{port}" if port and port != default else ""
            )
    status = _integer(attrs.take("http.response.status_code"))
    if status is not None and 0 <= status < 1000:
        request.http_status = status
    for key in [k for k in attrs.values if k.startswith(_HEADER_PREFIX)]:
        value = attrs.take(key)
        values = value if isinstance(value, list) else [value]
        request.headers[key.removeprefix(_HEADER_PREFIX)] = ", ".join(map(_plain_text, values))


def _context(span: pb.Span, attrs: _Attrs) -> None:
    session = span.session
    session.session_id = (_text(attrs.take("gen_ai.conversation.id", "session.id")) or "")[:_SHORT]
    session.end_user_id = (_text(attrs.take("user.id", "enduser.id")) or "")[:_SHORT]
    error_type = _text(attrs.take("error.type"))
    if error_type:
        span.error_category = error_type.lower()[:_CATEGORY]
        if span.status == pb.SPAN_STATUS_UNSPECIFIED:
            span.status = pb.SPAN_STATUS_ERROR
    tags = attrs.take("tag.tags")
    if isinstance(tags, str):
        tags = _json(tags) if tags.startswith("[") else [tags]
    if isinstance(tags, list):
        kept: list[str] = []
        for tag in (_plain_text(t)[:_MAX_TAG] for t in tags):
            if tag and tag not in kept and len(kept) < _MAX_TAGS:
                kept.append(tag)
        span.tags.extend(kept)


def _content(span: pb.Span, attrs: _Attrs, events: _Events) -> None:
    lists = _flattened(attrs)
    given_input = (
        _messages(attrs.take("gen_ai.input.messages"))
        or _io(attrs, "input")
        or lists.pop("llm.input_messages", None)
        or lists.pop("gen_ai.prompt", None)
        or _messages(attrs.take("gen_ai.prompt"))
        or _messages(attrs.take("gen_ai.tool.call.arguments"))
        or _messages(attrs.take("gen_ai.retrieval.query.text"))
        or _messages(attrs.take("traceloop.entity.input"))
        or events.input
    )
    documents = lists.pop("retrieval.documents", None) or _messages(
        attrs.take("gen_ai.retrieval.documents")
    )
    reranked = lists.pop("reranker.output_documents", None)
    given_output = (
        _messages(attrs.take("gen_ai.output.messages"))
        or _io(attrs, "output")
        or lists.pop("llm.output_messages", None)
        or lists.pop("gen_ai.completion", None)
        or _messages(attrs.take("gen_ai.completion"))
        or _messages(attrs.take("gen_ai.tool.call.result"))
        or reranked
        or documents
        or _messages(attrs.take("traceloop.entity.output"))
        or events.output
    )
    if given_input is not None:
        span.input.CopyFrom(_value(given_input))
    if given_output is not None:
        span.output.CopyFrom(_value(given_output))
    if isinstance(documents, list):
        span.rag.chunks_retrieved = len(documents)
    if span.kind == pb.SPAN_KIND_RERANK:
        span.rag.reranked = True
    # Lists that found no field stay in metadata, as lists.
    attrs.values.update(lists)


def _io(attrs: _Attrs, which: str) -> Any:
    """OpenInference input.value / output.value: JSON when its mime type says so."""
    value = attrs.take(f"{which}.value")
    if value is None:
        return None
    mime = _text(attrs.values.get(f"{which}.mime_type")) or ""
    if mime.split(";")[0].strip().lower() == "application/json":
        attrs.used.add(f"{which}.mime_type")
        return _messages(value)
    if mime:
        attrs.used.add(f"{which}.mime_type")
    return value


def _messages(value: Any) -> Any:
    """A value that may be JSON text (messages, arguments, documents) as what it holds."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        parsed = _json(value)
        return value if parsed is None else parsed
    return value


def _flattened(attrs: _Attrs) -> dict[str, Any]:
    """OpenInference-style flattened lists, gathered; their attributes are used up."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for key in list(attrs.values):
        for prefix, item_prefix in _FLATTENED.items():
            if not key.startswith(prefix + "."):
                continue
            index, dot, rest = key[len(prefix) + 1 :].partition(".")
            if not (
                dot and index.isascii() and index.isdigit()
            ):  # "²".isdigit(), yet int() refuses it
                continue
            item = found.setdefault(prefix, {}).setdefault(int(index), {})
            item[rest.removeprefix(item_prefix) if item_prefix else rest] = attrs.values[key]
            attrs.used.add(key)
            break
    return {prefix: [items[i] for i in sorted(items)] for prefix, items in found.items()}


@dataclass
class _Events:
    input: Any = None
    output: Any = None
    exception: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    other: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, events: Sequence[trace_pb2.Span.Event]) -> _Events:
        found = cls()
        for event in events:
            values = _attributes(event.attributes)
            if event.name == "gen_ai.content.prompt" and "gen_ai.prompt" in values:
                found.input = _messages(values["gen_ai.prompt"])
            elif event.name == "gen_ai.content.completion" and "gen_ai.completion" in values:
                found.output = _messages(values["gen_ai.completion"])
            elif event.name == "gen_ai.client.inference.operation.details":
                if "gen_ai.input.messages" in values:
                    found.input = _messages(values["gen_ai.input.messages"])
                if "gen_ai.output.messages" in values:
                    found.output = _messages(values["gen_ai.output.messages"])
            elif event.name == "gen_ai.evaluation.result" and _is_score(values):
                found.scores[str(values["gen_ai.evaluation.name"])] = float(
                    values["gen_ai.evaluation.score.value"]
                )
            else:
                if event.name == "exception" and not found.exception:
                    kind = _plain_text(values.get("exception.type", ""))
                    message = _plain_text(values.get("exception.message", ""))
                    found.exception = f"{kind}: {message}" if kind and message else kind or message
                found.other.append(
                    {"name": event.name, "time": _iso(event.time_unix_nano), "attributes": values}
                )
        return found


def _is_score(values: Mapping[str, Any]) -> bool:
    score = values.get("gen_ai.evaluation.score.value")
    return (
        isinstance(values.get("gen_ai.evaluation.name"), str)
        and isinstance(score, int | float)
        and not isinstance(score, bool)
        and 0 <= score <= 1
    )


# --- values -----------------------------------------------------------------------------------


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {pair.key: _plain(pair.value) for pair in pairs if pair.key}


def _plain(value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value (bytes as base64 text)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [_plain(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {pair.key: _plain(pair.value) for pair in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _safe(value: Any, depth: int = 0) -> Any:
    """JSON a Struct can hold: finite numbers, integers beyond a double's precision as text."""
    if depth > MAX_JSON_DEPTH:
        return "[TRUNCATED: nested too deep]"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v, depth + 1) for v in value]
    return str(value)


def _value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(_safe(value), struct_pb2.Value())


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(_safe(values), struct_pb2.Struct())


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, list | dict):
        return None
    return _plain_text(value)


def _plain_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    digits = value.strip().lstrip("-") if isinstance(value, str) else ""
    if (isinstance(value, float) and math.isfinite(value) and value.is_integer()) or (
        digits.isascii() and digits.isdigit()  # "²".isdigit(), yet int() refuses it
    ):
        value = int(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _iso(nanos: int) -> str:
    seconds, rest = divmod(nanos, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
    return when.isoformat().replace("+00:00", "Z")
