"""OTLP into the tracing service, on both backends: the real OpenTelemetry SDK and its OTLP/gRPC
exporter send to the service's TraceService, and the spans read back through TracingService are
mapped, completed (duration, cost from the price table) and sanitized."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_api
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import INTERNAL_TOKEN_KEY, USER_KEY
from services.common.server import start
from services.tracing import otlp
from services.tracing.service import MIGRATIONS, server_spec
from services.tracing.settings import TracingSettings
from tests.conftest import INTERNAL_TOKEN, new_user
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

OPENAI_KEY = "sk-proj-" + "A1b2C3d4" * 6


@dataclass
class Tracing:
    stub: api_grpc.TracingServiceAsyncStub
    channel: grpc.aio.Channel
    address: str
    user: str

    def as_(self) -> tuple[tuple[str, bytes], ...]:
        return ((USER_KEY, self.user.encode()),)

    async def listed(self, **where: Any) -> list[pb.Span]:
        reply = await self.stub.ListSpans(
            api.ListSpansRequest(filter=json_format.ParseDict(where, api.SpanFilter())),
            metadata=self.as_(),
        )
        return list(reply.spans)

    def exporter(self, user: str | bytes | None = None) -> OTLPSpanExporter:
        """The SDK's OTLP/gRPC exporter, as a producer configures it. A `-bin` metadata value is
        given as bytes (the exporter passes headers to gRPC as they are)."""
        value = self.user.encode() if user is None else user
        headers: Any = ((INTERNAL_TOKEN_KEY, INTERNAL_TOKEN), (USER_KEY, value))
        return OTLPSpanExporter(endpoint=self.address, insecure=True, headers=headers, timeout=5)


@pytest.fixture
async def tracing(empty_db_url: str) -> AsyncIterator[Tracing]:
    # In process: workers would start with every test (the worker path has its own test).
    settings = TracingSettings(
        database_url=empty_db_url, internal_token=INTERNAL_TOKEN, ingest_workers=0
    )
    db = Database(settings.database_url)
    await MIGRATIONS.upgrade(db)
    running = await start(server_spec(settings, db, address="127.0.0.1:0"))
    address = f"127.0.0.1:{running.port}"
    channel = open_channel(address, INTERNAL_TOKEN)
    try:
        yield Tracing(api_grpc.TracingServiceStub(channel), channel, address, new_user())
    finally:
        await channel.close()
        await running.stop()
        await db.close()


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    found = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    yield found
    found.shutdown()


def send(provider: TracerProvider, exporter: OTLPSpanExporter, build: Any) -> None:
    """Build spans with the SDK and export them. The SDK's exporter blocks, so this runs in a
    thread (asyncio.to_thread) while the event loop serves the call."""
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("tests.otlp"))
    assert provider.force_flush(5_000)


CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 400,
    "gen_ai.response.id": "chatcmpl-abc",
    "gen_ai.conversation.id": "conv-1",
    "server.address": "api.openai.com",
    "gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": "Weather?"}]}]
    ),
}
TOOL = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": "get_weather",
    "gen_ai.tool.call.arguments": '{"city": "Paris"}',
}


def chat_with_tool(tracer: Any) -> None:
    """An agent span, a chat span in it, and a failed tool call in the chat span."""
    with (
        tracer.start_as_current_span(
            "invoke_agent support", attributes={"gen_ai.operation.name": "invoke_agent"}
        ),
        tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=CHAT),
        tracer.start_as_current_span("execute_tool get_weather", attributes=TOOL) as tool,
    ):
        tool.set_status(Status(StatusCode.ERROR, "weather API down"))


async def test_sdk_spans_are_stored_mapped_and_completed(
    tracing: Tracing, provider: TracerProvider
) -> None:
    await asyncio.to_thread(send, provider, tracing.exporter(), chat_with_tool)

    spans = {s.name: s for s in await tracing.listed()}
    assert set(spans) == {"invoke_agent support", "chat gpt-4o", "execute_tool get_weather"}
    agent, chat, tool = (
        spans["invoke_agent support"],
        spans["chat gpt-4o"],
        spans["execute_tool get_weather"],
    )
    assert agent.kind == pb.SPAN_KIND_AGENT
    assert chat.kind == pb.SPAN_KIND_LLM
    assert tool.kind == pb.SPAN_KIND_TOOL
    assert len(chat.trace_id) == 32
    assert len(chat.span_id) == 16
    assert chat.model == "gpt-4o-2024-08-06"
    assert chat.provider == "openai"
    assert (chat.usage.input_tokens, chat.usage.output_tokens) == (1000, 400)
    assert chat.usage.total_tokens == 1400
    # gpt-4o: $2.50 in and $10 out per million tokens.
    assert chat.cost.total_usd == pytest.approx(1000 * 2.5e-6 + 400 * 10e-6)
    assert "cost.total_usd" in chat.computed
    nanos = chat.timing.end_time.ToNanoseconds() - chat.timing.start_time.ToNanoseconds()
    assert chat.timing.duration_ms == pytest.approx(nanos / 1e6)
    assert chat.request.provider_request_id == "chatcmpl-abc"
    assert chat.request.base_url == "https://api.openai.com"
    assert chat.session.session_id == "conv-1"
    messages: Any = json_format.MessageToDict(chat.input)
    assert messages[0]["role"] == "user"
    assert tool.status == pb.SPAN_STATUS_ERROR
    assert tool.status_message == "weather API down"
    assert json_format.MessageToDict(tool.input) == {"city": "Paris"}
    meta = json_format.MessageToDict(chat.metadata)
    assert meta["service.name"] == "support-bot"
    assert meta["otel.scope.name"] == "tests.otlp"

    trace = await tracing.stub.GetTrace(
        api.GetTraceRequest(trace_id=chat.trace_id), metadata=tracing.as_()
    )
    assert trace.span_count == 3
    (root,) = trace.roots
    assert root.span.span_id == agent.span_id
    (child,) = root.children
    assert child.span.span_id == chat.span_id
    assert [c.span.span_id for c in child.children] == [tool.span_id]


async def test_credentials_are_masked(tracing: Tracing, provider: TracerProvider) -> None:
    def leaky(tracer: Any) -> None:
        with tracer.start_as_current_span(
            "chat",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "authorization": f"Bearer {OPENAI_KEY}",
                "http.request.header.authorization": [f"Bearer {OPENAI_KEY}"],
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "content": f"my key is {OPENAI_KEY}, fix it"}]
                ),
            },
        ):
            pass

    await asyncio.to_thread(send, provider, tracing.exporter(), leaky)

    (stored,) = await tracing.listed()
    text = json_format.MessageToJson(stored)
    assert OPENAI_KEY not in text
    assert "[REDACTED]" in json_format.MessageToDict(stored.metadata)["authorization"]
    assert "[REDACTED]" in stored.request.headers["authorization"]
    assert "fix it" in text


async def test_the_user_must_be_named(tracing: Tracing, provider: TracerProvider) -> None:
    """The user is binary (-bin) metadata: the Python exporter hands its headers to gRPC as
    they are, and gRPC takes only bytes for a -bin key (a str, as OTEL_EXPORTER_OTLP_HEADERS
    gives, fails the export in the client). Without a user the call is refused."""
    await asyncio.to_thread(
        send, provider, tracing.exporter(tracing.user), lambda t: t.start_span("as str").end()
    )
    assert await tracing.listed() == []

    stub: Any = otlp_grpc.TraceServiceStub(tracing.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Export(otlp_api.ExportTraceServiceRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_partial_success_for_unmappable_and_refused_spans(tracing: Tracing) -> None:
    start_ns = 1_764_331_200_000_000_000
    good = trace_pb2.Span(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="ok", start_time_unix_nano=start_ns
    )
    zero_trace = trace_pb2.Span(
        trace_id=bytes(16), span_id=b"\x03" * 8, name="zero", start_time_unix_nano=start_ns
    )
    no_start = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x04" * 8, name="no start")
    request = otlp_api.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                scope_spans=[trace_pb2.ScopeSpans(spans=[good, zero_trace, no_start])]
            )
        ]
    )
    stub: Any = otlp_grpc.TraceServiceStub(tracing.channel)  # type: ignore[no-untyped-call]
    reply: otlp_api.ExportTraceServiceResponse = await stub.Export(request, metadata=tracing.as_())

    assert reply.HasField("partial_success")
    assert reply.partial_success.rejected_spans == 2
    message = reply.partial_success.error_message
    assert "span #1: trace_id is empty or all zeros" in message
    assert "timing.start_time is required" in message
    assert [s.name for s in await tracing.listed()] == ["ok"]

    clean = await stub.Export(
        otlp_api.ExportTraceServiceRequest(
            resource_spans=[
                trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[good])])
            ]
        ),
        metadata=tracing.as_(),
    )
    assert not clean.HasField("partial_success")


async def test_health_lists_the_otlp_service(tracing: Tracing) -> None:
    health = health_pb2_grpc.HealthStub(tracing.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=otlp.SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert otlp.SERVICE_NAME == "opentelemetry.proto.collector.trace.v1.TraceService"
