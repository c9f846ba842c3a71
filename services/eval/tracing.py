"""The eval service's calls to the tracing service, each made as the user it acts for.

Every trace the eval service judges is read here, and every score it writes goes back here:
it never reads the tracing service's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.common.client import open_channel
from services.common.context import acting_for
from services.common.errors import RemoteError, ServiceError, not_found
from tunelab.common.v1 import errors_pb2
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

_SERVICE = "tunelab.tracing.v1.TracingService"
# Reads, and writes that are idempotent (an annotation sets values; a span batch is keyed).
_RETRY = ["GetTrace", "ListSpans", "ListSpanChanges", "FindTraces", "AnnotateSpan", "IngestSpans"]


@dataclass(frozen=True)
class Changes:
    spans: list[pb.Span]
    cursor: str
    caught_up: bool


def unavailable(error: grpc.aio.AioRpcError) -> ServiceError:
    remote = RemoteError.from_rpc_error(error)
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        f"the tracing service did not answer ({remote.code.name}); retry in a moment",
        errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
    )


class TracingClient:
    def __init__(self, address: str, internal_token: str) -> None:
        self.channel = open_channel(address, internal_token, retry={_SERVICE: _RETRY})
        self.stub = api_grpc.TracingServiceStub(self.channel)

    async def trace(self, owner: str, trace_id: str) -> list[pb.Span]:
        """The trace's spans, parents before children; NOT_FOUND when it is not the owner's."""
        with acting_for(owner):
            try:
                reply = await self.stub.GetTrace(api.GetTraceRequest(trace_id=trace_id))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise not_found("trace", trace_id) from None
                if exc.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    remote = RemoteError.from_rpc_error(exc)
                    raise ServiceError(
                        exc.code(),
                        remote.message,
                        errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
                        {"field": "trace_id"},
                    ) from None
                raise unavailable(exc) from None
        found: list[pb.Span] = []
        stack = list(reversed(reply.roots))
        while stack:
            node = stack.pop()
            found.append(node.span)
            stack.extend(reversed(node.children))
        return found

    async def annotate(
        self, owner: str, trace_id: str, span_id: str, evaluation: pb.Evaluation
    ) -> bool:
        """Write scores onto a span; False when the span is gone (the trace was deleted)."""
        with acting_for(owner):
            try:
                await self.stub.AnnotateSpan(
                    api.AnnotateSpanRequest(
                        trace_id=trace_id, span_id=span_id, evaluation=evaluation
                    )
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
        return True

    async def ingest(self, owner: str, spans: Sequence[pb.Span]) -> None:
        with acting_for(owner):
            reply = await self.stub.IngestSpans(api.IngestSpansRequest(spans=spans))
        if reply.rejected:
            first = reply.rejected[0]
            raise ValueError(f"the tracing service refused a span: {first.field}: {first.reason}")

    async def changes(
        self, owner: str, where: api.SpanFilter, cursor: str, page_size: int
    ) -> Changes:
        with acting_for(owner):
            reply = await self.stub.ListSpanChanges(
                api.ListSpanChangesRequest(filter=where, cursor=cursor, page_size=page_size)
            )
        return Changes(list(reply.spans), reply.next_cursor, reply.caught_up)

    async def spans(
        self, owner: str, where: api.SpanFilter, page_token: str, page_size: int
    ) -> tuple[list[pb.Span], str]:
        """A page of the owner's spans; a filter the tracing service refuses is an
        INVALID_ARGUMENT naming its field (under `filter.`)."""
        with acting_for(owner):
            try:
                reply = await self.stub.ListSpans(
                    api.ListSpansRequest(filter=where, page_token=page_token, page_size=page_size)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise unavailable(exc) from None
                remote = RemoteError.from_rpc_error(exc)
                field = remote.metadata.get("field", "")
                raise ServiceError(
                    exc.code(),
                    f"filter: {remote.message}",
                    errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
                    {"field": f"filter.{field}" if field else "filter"},
                ) from None
        return list(reply.spans), reply.next_page_token

    async def existing_traces(self, owner: str, trace_ids: Sequence[str]) -> set[str]:
        with acting_for(owner):
            reply = await self.stub.FindTraces(api.FindTracesRequest(trace_ids=trace_ids))
        return set(reply.trace_ids)

    async def close(self) -> None:
        await self.channel.close()
