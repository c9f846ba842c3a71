"""The eval service in process, over a real gRPC port, beside an in-process tracing service;
each on its own fresh database of the test's backend."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import json_format

from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.server import RunningServer, start
from services.eval.service import MIGRATIONS as EVAL_MIGRATIONS
from services.eval.service import server_spec as eval_spec
from services.eval.settings import EvalSettings
from services.tracing.service import MIGRATIONS as TRACING_MIGRATIONS
from services.tracing.service import server_spec as tracing_spec
from services.tracing.settings import TracingSettings
from tests.conftest import INTERNAL_TOKEN, new_user
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import eval_service_pb2_grpc as api_grpc
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi
from tunelab.tracing.v1 import tracing_service_pb2_grpc as tapi_grpc

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEK = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def span(trace: str, span_id: str, parent: str = "", start_ms: float = 0, **fields: Any) -> pb.Span:
    data: dict[str, Any] = {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": fields.pop("name", "chat"),
        "timing": {
            "start_time": (T0 + timedelta(milliseconds=start_ms)).isoformat(),
            "end_time": (T0 + timedelta(milliseconds=start_ms + 800)).isoformat(),
        },
    }
    data.update(fields)
    return json_format.ParseDict(data, pb.Span())


def rag_trace(
    trace: str, answer: str, documents: Sequence[str], *, session: str = "s1", model: str = "gpt-4o"
) -> list[pb.Span]:
    """A RAG call as an instrumented app records it: a chain, its retrieval, its LLM call."""
    return [
        span(trace, "root", name="answer", kind="SPAN_KIND_CHAIN", session={"session_id": session}),
        span(
            trace,
            "retrieve",
            "root",
            10,
            name="retrieve",
            kind="SPAN_KIND_RETRIEVAL",
            output=[{"document": {"content": d}} for d in documents],
        ),
        span(
            trace,
            "llm",
            "root",
            20,
            kind="SPAN_KIND_LLM",
            model=model,
            session={"session_id": session},
            input=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
            output=[{"role": "assistant", "content": answer}],
            usage={"input_tokens": 120, "output_tokens": 30},
        ),
    ]


@dataclass
class Suite:
    eval: api_grpc.EvalServiceAsyncStub
    tracing: tapi_grpc.TracingServiceAsyncStub
    eval_db: Database
    settings: EvalSettings
    running: RunningServer
    eval_url: str
    tracing_address: str
    eval_channel: grpc.aio.Channel
    overrides: dict[str, Any]
    user: str = field(default_factory=new_user)

    async def stop_eval(self) -> None:
        await self.eval_channel.close()
        await self.running.stop()
        await self.eval_db.close()

    async def restart_eval(self) -> None:
        """Stop the eval service and start it again on the same database."""
        await self.stop_eval()
        self.running, self.eval_db, self.settings = await start_eval(
            self.eval_url, self.tracing_address, **self.overrides
        )
        self.eval_channel = open_channel(f"127.0.0.1:{self.running.port}", INTERNAL_TOKEN)
        self.eval = api_grpc.EvalServiceStub(self.eval_channel)

    def as_(self, user: str | None = None) -> tuple[tuple[str, bytes], ...]:
        return ((USER_KEY, (user or self.user).encode()),)

    async def ingest(self, spans: Sequence[pb.Span], user: str | None = None) -> None:
        reply = await self.tracing.IngestSpans(
            tapi.IngestSpansRequest(spans=spans), metadata=self.as_(user)
        )
        assert not reply.rejected, reply.rejected

    async def evaluate(self, user: str | None = None, **body: Any) -> api.EvaluateResponse:
        request = json_format.ParseDict(body, api.EvaluateRequest())
        return await self.eval.Evaluate(request, metadata=self.as_(user), timeout=60)

    async def span_of(self, trace_id: str, span_id: str) -> pb.Span:
        reply = await self.tracing.GetTrace(
            tapi.GetTraceRequest(trace_id=trace_id), metadata=self.as_()
        )
        stack = list(reply.roots)
        while stack:
            node = stack.pop()
            if node.span.span_id == span_id:
                return node.span
            stack.extend(node.children)
        raise AssertionError(f"no span {span_id} in {trace_id}")


@contextlib.asynccontextmanager
async def eval_suite(urls: tuple[str, str], **overrides: Any) -> AsyncIterator[Suite]:
    """A tracing and an eval service on the two databases (`overrides`: EvalSettings)."""
    tracing_url, eval_url = urls
    async for _tracing, tracing_address in serve_tracing(tracing_url):
        running, db, settings = await start_eval(eval_url, tracing_address, **overrides)
        eval_channel = open_channel(f"127.0.0.1:{running.port}", INTERNAL_TOKEN)
        tracing_channel = open_channel(tracing_address, INTERNAL_TOKEN)
        made = Suite(
            api_grpc.EvalServiceStub(eval_channel),
            tapi_grpc.TracingServiceStub(tracing_channel),
            db,
            settings,
            running,
            eval_url,
            tracing_address,
            eval_channel,
            overrides,
        )
        try:
            yield made
        finally:
            await tracing_channel.close()
            await made.stop_eval()


async def serve_tracing(url: str) -> AsyncIterator[tuple[RunningServer, str]]:
    settings = TracingSettings(
        database_url=url, internal_token=INTERNAL_TOKEN, ingest_workers=0, follow_settle_seconds=0
    )
    db = Database(url)
    await TRACING_MIGRATIONS.upgrade(db)
    running = await start(tracing_spec(settings, db, address="127.0.0.1:0"))
    try:
        yield running, f"127.0.0.1:{running.port}"
    finally:
        await running.stop()
        await db.close()


async def start_eval(
    url: str, tracing_address: str, **overrides: Any
) -> tuple[RunningServer, Database, EvalSettings]:
    settings = EvalSettings(
        database_url=url,
        internal_token=INTERNAL_TOKEN,
        tracing_address=tracing_address,
        keys_kek=KEK,
        follow_interval_seconds=0.1,
        housekeeping_interval_seconds=3600,
        **overrides,
    )
    db = Database(url)
    await EVAL_MIGRATIONS.upgrade(db)
    running = await start(eval_spec(settings, db, address="127.0.0.1:0"))
    return running, db, settings
