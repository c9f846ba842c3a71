"""OTLP spans onto ours: ids, times, status, kind, the GenAI and OpenInference attributes,
metadata for the rest, and problems for spans that cannot be mapped."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gateway.otlp import JSON, parse_export
from services.tracing.otlp import spans_from_otlp
from tunelab.tracing.v1 import spans_pb2 as pb

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
ROOT = bytes.fromhex("b7ad6b7169203331")
CHILD = bytes.fromhex("00f067aa0ba902b7")
T0_NS = 1_764_331_200_000_000_000  # 2025-11-28T12:00:00Z


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=attributes(value)))
    return AnyValue(string_value=str(value))


def attributes(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in values.items()]


def otel_span(
    span_id: bytes = CHILD,
    parent: bytes = ROOT,
    *,
    trace_id: bytes = TRACE,
    name: str = "chat gpt-4o",
    start_ms: int = 0,
    duration_ms: int = 1500,
    attrs: dict[str, Any] | None = None,
    **fields: Any,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=T0_NS + start_ms * 1_000_000,
        end_time_unix_nano=T0_NS + (start_ms + duration_ms) * 1_000_000,
        attributes=attributes(attrs or {}),
        **fields,
    )


def request(*spans: Span, resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=attributes(resource or {})),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="my.instrumentation", version="1.2"),
                        spans=list(spans),
                    )
                ],
            )
        ]
    )


def one(span: Span, **kwargs: Any) -> pb.Span:
    found, problems = spans_from_otlp(request(span, **kwargs))
    assert problems == []
    assert len(found) == 1
    return found[0]


def plain(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


GENAI_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300,
    "gen_ai.usage.cache_read.input_tokens": 1000,
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.response.finish_reasons": ["stop"],
    "gen_ai.conversation.id": "conv-9",
    "server.address": "api.openai.com",
    "server.port": 443,
    "http.response.status_code": 200,
    "gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": "Hi"}]}]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "Hello!"}]}]
    ),
}


def test_ids_times_and_status() -> None:
    span = one(
        otel_span(
            start_ms=250,
            duration_ms=1500,
            status=Status(code=Status.STATUS_CODE_ERROR, message="rate limited"),
        )
    )
    assert span.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id == "00f067aa0ba902b7"
    assert span.parent_span_id == "b7ad6b7169203331"
    assert span.name == "chat gpt-4o"
    assert span.timing.start_time.ToDatetime(tzinfo=UTC) == datetime(
        2025, 11, 28, 12, 0, 0, 250_000, tzinfo=UTC
    )
    assert span.timing.end_time.ToNanoseconds() - span.timing.start_time.ToNanoseconds() == (
        1_500_000_000
    )
    assert span.status == pb.SPAN_STATUS_ERROR
    assert span.status_message == "rate limited"
    assert one(otel_span(status=Status(code=Status.STATUS_CODE_OK))).status == pb.SPAN_STATUS_OK
    assert one(otel_span()).status == pb.SPAN_STATUS_UNSPECIFIED


def test_a_root_has_no_parent() -> None:
    assert one(otel_span(ROOT, b"")).parent_span_id == ""
    assert one(otel_span(ROOT, bytes(8))).parent_span_id == ""


def test_genai_chat_span() -> None:
    span = one(otel_span(attrs=GENAI_CHAT))
    assert span.kind == pb.SPAN_KIND_LLM
    assert span.model == "gpt-4o-2024-08-06"  # the response's model wins
    assert span.provider == "openai"
    assert span.usage.input_tokens == 1200
    assert span.usage.output_tokens == 300
    assert span.usage.cache_read_input_tokens == 1000
    assert not span.usage.HasField("total_tokens")  # the service computes it
    assert span.request.provider_request_id == "chatcmpl-123"
    assert span.request.base_url == "https://api.openai.com"
    assert span.request.http_status == 200
    assert span.session.session_id == "conv-9"
    assert plain(span.input) == [{"role": "user", "parts": [{"type": "text", "content": "Hi"}]}]
    assert plain(span.output)[0]["parts"][0]["content"] == "Hello!"
    meta = plain(span.metadata)
    # What has no field of its own is kept, under its key; what was mapped is not repeated.
    assert meta["gen_ai.request.temperature"] == 0.2
    assert meta["gen_ai.response.finish_reasons"] == ["stop"]
    assert meta["gen_ai.request.model"] == "gpt-4o"  # differs from the response's
    assert meta["otel.span_kind"] == "CLIENT"
    assert meta["otel.scope.name"] == "my.instrumentation"
    for mapped in (
        "gen_ai.usage.input_tokens",
        "gen_ai.provider.name",
        "gen_ai.operation.name",
        "gen_ai.input.messages",
        "server.address",
    ):
        assert mapped not in meta


def test_resource_attributes_land_in_metadata() -> None:
    span = one(
        otel_span(attrs={"service.name": "span-level", "deployment": "blue"}),
        resource={"service.name": "rag-api", "service.version": "3.1", "host.name": "web-1"},
    )
    meta = plain(span.metadata)
    assert meta["service.version"] == "3.1"
    assert meta["host.name"] == "web-1"
    assert meta["service.name"] == "span-level"  # the span's own attribute wins
    assert meta["deployment"] == "blue"


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        ("chat", pb.SPAN_KIND_LLM),
        ("text_completion", pb.SPAN_KIND_LLM),
        ("generate_content", pb.SPAN_KIND_LLM),
        ("embeddings", pb.SPAN_KIND_EMBEDDING),
        ("execute_tool", pb.SPAN_KIND_TOOL),
        ("invoke_agent", pb.SPAN_KIND_AGENT),
        ("create_agent", pb.SPAN_KIND_AGENT),
        ("something_else", pb.SPAN_KIND_UNSPECIFIED),
    ],
)
def test_kind_from_genai_operation(operation: str, kind: int) -> None:
    span = one(otel_span(attrs={"gen_ai.operation.name": operation}))
    assert span.kind == kind
    # An operation we have no kind for stays visible in metadata.
    assert ("gen_ai.operation.name" in plain(span.metadata)) == (kind == pb.SPAN_KIND_UNSPECIFIED)


@pytest.mark.parametrize(
    ("oi_kind", "kind"),
    [
        ("LLM", pb.SPAN_KIND_LLM),
        ("EMBEDDING", pb.SPAN_KIND_EMBEDDING),
        ("RETRIEVER", pb.SPAN_KIND_RETRIEVAL),
        ("RERANKER", pb.SPAN_KIND_RERANK),
        ("TOOL", pb.SPAN_KIND_TOOL),
        ("CHAIN", pb.SPAN_KIND_CHAIN),
        ("AGENT", pb.SPAN_KIND_AGENT),
        ("GUARDRAIL", pb.SPAN_KIND_GUARDRAIL),
        ("EVALUATOR", pb.SPAN_KIND_UNSPECIFIED),
    ],
)
def test_kind_from_openinference(oi_kind: str, kind: int) -> None:
    assert one(otel_span(attrs={"openinference.span.kind": oi_kind})).kind == kind


def test_openinference_llm_span() -> None:
    span = one(
        otel_span(
            attrs={
                "openinference.span.kind": "LLM",
                "llm.model_name": "claude-3-5-sonnet-20241022",
                "llm.provider": "anthropic",
                "llm.token_count.prompt": 500,
                "llm.token_count.completion": 80,
                "llm.token_count.total": 580,
                "llm.token_count.prompt_details.cache_read": 400,
                "llm.cost.total": 0.0021,
                "input.value": '{"question": "What is RAG?"}',
                "input.mime_type": "application/json",
                "output.value": "Retrieval-augmented generation.",
                "output.mime_type": "text/plain",
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": "Be brief.",
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.content": "What is RAG?",
                "session.id": "sess-1",
                "user.id": "end-user-7",
                "tag.tags": ["production", "experiment-7", "production"],
                "llm.invocation_parameters": '{"max_tokens": 100}',
            }
        )
    )
    assert span.kind == pb.SPAN_KIND_LLM
    assert span.model == "claude-3-5-sonnet-20241022"
    assert span.provider == "anthropic"
    assert span.usage.input_tokens == 500
    assert span.usage.output_tokens == 80
    assert span.usage.total_tokens == 580
    assert span.usage.cache_read_input_tokens == 400
    assert span.cost.total_usd == pytest.approx(0.0021)
    assert plain(span.input) == {"question": "What is RAG?"}  # parsed: application/json
    assert plain(span.output) == "Retrieval-augmented generation."
    assert span.session.session_id == "sess-1"
    assert span.session.end_user_id == "end-user-7"
    assert list(span.tags) == ["production", "experiment-7"]
    meta = plain(span.metadata)
    # The flattened messages found no field (input.value did): kept as one list.
    assert meta["llm.input_messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is RAG?"},
    ]
    assert meta["llm.invocation_parameters"] == '{"max_tokens": 100}'
    assert not any(key.startswith(("llm.token_count", "input.", "output.")) for key in meta)


def test_openinference_messages_when_no_value() -> None:
    span = one(
        otel_span(
            attrs={
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Hi",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "Hello",
            }
        )
    )
    assert plain(span.input) == [{"role": "user", "content": "Hi"}]
    assert plain(span.output) == [{"role": "assistant", "content": "Hello"}]
    assert "llm.input_messages" not in plain(span.metadata)


def test_openinference_retriever_documents() -> None:
    span = one(
        otel_span(
            attrs={
                "openinference.span.kind": "RETRIEVER",
                "input.value": "what is rag",
                "retrieval.documents.0.document.id": "d1",
                "retrieval.documents.0.document.content": "RAG is ...",
                "retrieval.documents.0.document.score": 0.9,
                "retrieval.documents.1.document.id": "d2",
                "retrieval.documents.1.document.content": "More on RAG",
            }
        )
    )
    assert span.kind == pb.SPAN_KIND_RETRIEVAL
    assert plain(span.input) == "what is rag"
    assert plain(span.output) == [
        {"id": "d1", "content": "RAG is ...", "score": 0.9},
        {"id": "d2", "content": "More on RAG"},
    ]
    assert span.rag.chunks_retrieved == 2


def test_older_genai_names() -> None:
    span = one(
        otel_span(
            attrs={
                "gen_ai.system": "OpenAI",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": 5,
                "error.type": "RateLimitError",
            }
        )
    )
    assert span.provider == "openai"
    assert span.model == "gpt-4o-mini"
    assert (span.usage.input_tokens, span.usage.output_tokens) == (10, 5)
    assert span.error_category == "ratelimiterror"
    assert span.status == pb.SPAN_STATUS_ERROR  # error.type means the operation failed
    assert "gen_ai.request.model" not in plain(span.metadata)


def test_tool_span_arguments_and_result() -> None:
    span = one(
        otel_span(
            name="execute_tool get_weather",
            attrs={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                "gen_ai.tool.call.result": '{"temp_c": 21}',
            },
        )
    )
    assert span.kind == pb.SPAN_KIND_TOOL
    assert plain(span.input) == {"city": "Paris"}
    assert plain(span.output) == {"temp_c": 21}
    assert plain(span.metadata)["gen_ai.tool.name"] == "get_weather"


def test_url_headers_and_odd_values() -> None:
    span = one(
        otel_span(
            attrs={
                "url.full": "https://api.example.com/v1/chat/completions?api-version=2",
                "http.request.header.x-request-source": ["sdk", "retry"],
                "big": 2**60,
                "nan": float("nan"),
                "blob": b"\x00\x01",
                "nested": {"a": [1, {"b": True}]},
                "gen_ai.input.messages": "not json at all",
            }
        )
    )
    assert span.request.base_url == "https://api.example.com"
    assert span.request.api_endpoint == "/v1/chat/completions"
    assert span.request.headers["x-request-source"] == "sdk, retry"
    assert plain(span.input) == "not json at all"
    meta = plain(span.metadata)
    assert meta["big"] == str(2**60)  # beyond a double's precision
    assert meta["nan"] == "nan"
    assert meta["blob"] == base64.b64encode(b"\x00\x01").decode()
    assert meta["nested"] == {"a": [1, {"b": True}]}


def test_events_exception_and_prompt() -> None:
    span = one(
        otel_span(
            status=Status(code=Status.STATUS_CODE_ERROR),
            events=[
                Span.Event(
                    name="gen_ai.content.prompt",
                    time_unix_nano=T0_NS,
                    attributes=attributes({"gen_ai.prompt": '[{"role": "user"}]'}),
                ),
                Span.Event(
                    name="gen_ai.content.completion",
                    time_unix_nano=T0_NS,
                    attributes=attributes({"gen_ai.completion": "Done."}),
                ),
                Span.Event(
                    name="exception",
                    time_unix_nano=T0_NS + 1000,
                    attributes=attributes(
                        {"exception.type": "TimeoutError", "exception.message": "read timed out"}
                    ),
                ),
            ],
        )
    )
    assert plain(span.input) == [{"role": "user"}]
    assert plain(span.output) == "Done."
    assert span.status_message == "TimeoutError: read timed out"
    (event,) = plain(span.metadata)["otel.events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.message"] == "read timed out"


def test_server_address_with_port() -> None:
    local = one(otel_span(attrs={"server.address": "localhost", "server.port": 8000}))
    assert local.request.base_url == "https://localhost:8000"
    plain_http = one(
        otel_span(attrs={"server.address": "vllm", "server.port": 8000, "url.scheme": "http"})
    )
    assert plain_http.request.base_url == "http://vllm:8000"


def test_unmappable_spans_are_problems() -> None:
    found, problems = spans_from_otlp(
        request(
            otel_span(ROOT, b""),
            otel_span(trace_id=bytes(16)),
            otel_span(b""),
            otel_span(CHILD, ROOT, trace_id=b"\x01" * 40),
        )
    )
    assert [s.span_id for s in found] == [ROOT.hex()]
    assert problems == [
        "span #1: trace_id is empty or all zeros",
        "span #2: span_id is empty or all zeros",
        "span #3: trace_id is longer than 32 bytes",
    ]


def test_many_resources_and_scopes() -> None:
    batch = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=attributes({"service.name": name})),
                scope_spans=[ScopeSpans(spans=[otel_span(bytes([i + 1]) * 8, b"")])],
            )
            for i, name in enumerate(["a", "b"])
        ]
    )
    found, problems = spans_from_otlp(batch)
    assert problems == []
    assert [plain(s.metadata)["service.name"] for s in found] == ["a", "b"]


def test_otlp_json_body() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": CHILD.hex(),
                                "parentSpanId": "",
                                "name": "chat",
                                "kind": 3,
                                "startTimeUnixNano": str(T0_NS),
                                "endTimeUnixNano": str(T0_NS + 10**9),
                                "attributes": [
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}}
                                ],
                                "status": {"code": 2},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    (span,), problems = spans_from_otlp(parse_export(json.dumps(body).encode(), JSON))
    assert problems == []
    assert span.trace_id == TRACE.hex()
    assert span.span_id == CHILD.hex()
    assert span.parent_span_id == ""
    assert span.usage.input_tokens == 7
    assert span.status == pb.SPAN_STATUS_ERROR
    with pytest.raises(ValueError, match="not hex"):
        parse_export(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "zz"}
        ]}]}]}).encode(), JSON)  # fmt: skip
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_export(b"{", JSON)


def test_deep_json_is_cut_not_refused() -> None:
    deep = "[" * 200 + "]" * 200
    span = one(otel_span(attrs={"gen_ai.input.messages": deep, "nested": {"a": {"b": {}}}}))
    text = json_format.MessageToJson(span)
    assert "[TRUNCATED: nested too deep]" in text
    json_format.Parse(text, pb.Span())  # what the store writes, it can read back


def test_digits_that_are_not_ascii_are_kept_as_attributes_not_a_crash() -> None:
    """ "²".isdigit() is true, yet int("²") raises: such an index or count is no number."""
    span = one(
        otel_span(
            attrs={
                "llm.input_messages.².message.role": "user",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Hi",
                "gen_ai.usage.input_tokens": "²",
                "server.port": "¹²",
            }
        )
    )
    assert plain(span.input) == [{"role": "user", "content": "Hi"}]
    assert not span.usage.HasField("input_tokens")
    meta = plain(span.metadata)
    assert meta["llm.input_messages.².message.role"] == "user"
