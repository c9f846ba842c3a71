"""The TracingService gRPC servicer: checks and mapping; the work is in the modules it calls."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import grpc

from services.common.errors import invalid_argument
from services.common.identity import require_user
from services.common.pagination import page_size
from services.tracing import analytics, export, spans
from services.tracing.prepare import Rejected
from services.tracing.settings import TracingSettings
from services.tracing.store import SpanStore
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

Context = grpc.aio.ServicerContext[object, object]
# A stream's answer lists at most this many rejections (its accepted count says the rest).
MAX_REJECTIONS_LISTED = 1000
MAX_FIND_TRACES = 1000
CHANGES_PAGE_SIZE, MAX_CHANGES_PAGE_SIZE = 100, 1000
# SpanFilter's numbers: scores (0 to 1), and amounts (any finite number).
_FILTER_SCORES = ("groundedness_below", "min_groundedness", "min_eval_score", "eval_score_below")
_FILTER_AMOUNTS = ("min_duration_ms", "min_cost_usd")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class TracingServicer(api_grpc.TracingServiceServicer):
    def __init__(self, store: SpanStore, settings: TracingSettings, clock: Clock = utc_now) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    async def IngestSpans(
        self, request: api.IngestSpansRequest, context: Context
    ) -> api.IngestSpansResponse:
        accepted, rejected = await self._ingest(require_user(), request.spans, 0)
        return api.IngestSpansResponse(accepted=accepted, rejected=rejected)

    async def StreamSpans(
        self, request_iterator: AsyncIterator[api.StreamSpansRequest], context: Context
    ) -> api.StreamSpansResponse:
        owner = require_user()
        total, refused, offset = 0, list[api.Rejection](), 0
        async for batch in request_iterator:
            accepted, rejected = await self._ingest(owner, batch.spans, offset)
            total += accepted
            refused.extend(rejected[: MAX_REJECTIONS_LISTED - len(refused)])
            offset += len(batch.spans)
        return api.StreamSpansResponse(accepted=total, rejected=refused)

    async def _ingest(
        self, owner: str, batch: Sequence[pb.Span], offset: int
    ) -> tuple[int, list[api.Rejection]]:
        if len(batch) > self.settings.max_batch_spans:
            raise invalid_argument(
                "spans",
                f"a batch holds at most {self.settings.max_batch_spans} spans; "
                f"this one holds {len(batch)}: split it",
            )
        refused = await self.store.ingest(owner, batch, offset, self.clock)
        refused.sort(key=lambda r: r.index)
        return len(batch) - len(refused), list(_rejections(refused))

    async def GetAnalytics(
        self, request: api.GetAnalyticsRequest, context: Context
    ) -> api.GetAnalyticsResponse:
        if request.group_by not in api.AnalyticsGroup.values():
            raise invalid_argument("group_by", "group_by is model, provider, hour or day")
        check_filter(request.filter)
        rows = await analytics.analytics(
            self.store.db, require_user(), request.filter, request.group_by
        )
        return api.GetAnalyticsResponse(rows=[_analytics_row(row) for row in rows])

    async def ExportSpans(
        self, request: api.ExportSpansRequest, context: Context
    ) -> AsyncIterator[api.ExportSpansResponse]:
        if request.format not in api.ExportFormat.values():
            raise invalid_argument("format", "format is csv, json or jsonl")
        check_filter(request.filter)
        owner = require_user()
        async for chunk in export.export(self.store.db, owner, request.filter, request.format):
            yield api.ExportSpansResponse(data=chunk)

    async def ListSpans(
        self, request: api.ListSpansRequest, context: Context
    ) -> api.ListSpansResponse:
        check_filter(request.filter)
        found = await self.store.list_spans(
            require_user(), request.filter, page_size(request.page_size), request.page_token
        )
        return api.ListSpansResponse(
            spans=[s.span for s in found.items], next_page_token=found.next_page_token
        )

    async def ListSpanChanges(
        self, request: api.ListSpanChangesRequest, context: Context
    ) -> api.ListSpanChangesResponse:
        owner = require_user()
        check_filter(request.filter)
        size = page_size(request.page_size, CHANGES_PAGE_SIZE, MAX_CHANGES_PAGE_SIZE)
        settled = self.clock() - timedelta(seconds=self.settings.follow_settle_seconds)
        found = await self.store.span_changes(owner, request.filter, size, request.cursor, settled)
        return api.ListSpanChangesResponse(
            spans=found.spans, next_cursor=found.cursor, caught_up=found.caught_up
        )

    async def FindTraces(
        self, request: api.FindTracesRequest, context: Context
    ) -> api.FindTracesResponse:
        owner = require_user()
        if len(request.trace_ids) > MAX_FIND_TRACES:
            raise invalid_argument(
                "trace_ids",
                f"at most {MAX_FIND_TRACES} trace_ids at a time; this request holds "
                f"{len(request.trace_ids)}: split it",
            )
        return api.FindTracesResponse(
            trace_ids=await self.store.find_traces(owner, request.trace_ids)
        )

    async def GetTrace(
        self, request: api.GetTraceRequest, context: Context
    ) -> api.GetTraceResponse:
        if not request.trace_id:
            raise invalid_argument("trace_id", "trace_id is required")
        found = await self.store.trace(require_user(), request.trace_id)
        return api.GetTraceResponse(
            trace_id=request.trace_id, span_count=len(found), roots=tree(found)
        )

    async def AnnotateSpan(
        self, request: api.AnnotateSpanRequest, context: Context
    ) -> api.AnnotateSpanResponse:
        owner = require_user()
        probe = pb.Span(
            trace_id=request.trace_id, span_id=request.span_id, evaluation=request.evaluation
        )
        try:
            spans.check_part(probe, self.clock())
        except spans.Invalid as exc:
            raise invalid_argument(exc.field, exc.reason) from None
        span = await self.store.annotate(
            owner, request.trace_id, request.span_id, request.evaluation, self.clock
        )
        return api.AnnotateSpanResponse(span=span)

    async def DeleteSpans(
        self, request: api.DeleteSpansRequest, context: Context
    ) -> api.DeleteSpansResponse:
        owner = require_user()
        if not request.HasField("started_before"):
            raise invalid_argument("started_before", "started_before is required")
        before = request.started_before.ToDatetime(tzinfo=UTC)
        return api.DeleteSpansResponse(deleted=await self.store.delete_before(owner, before))


def check_filter(where: api.SpanFilter) -> None:
    """INVALID_ARGUMENT naming the first number of the filter that cannot be compared."""
    for field, value in where.ListFields():
        name = field.name
        if name in _FILTER_SCORES and not 0 <= value <= 1:  # NaN too
            raise invalid_argument(f"filter.{name}", f"{name} must be a number from 0 to 1")
        if name in _FILTER_AMOUNTS and not math.isfinite(value):
            raise invalid_argument(f"filter.{name}", f"{name} must be a finite number")


def tree(found: Iterable[pb.Span]) -> list[pb.SpanNode]:
    """Spans (in start order) as a forest: a span whose parent is not in the trace (not sent,
    or sent later) is a root until its parent arrives."""
    ordered = list(found)
    nodes = {span.span_id: pb.SpanNode(span=span) for span in ordered}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for span in ordered:
        if span.parent_span_id in nodes:
            children.setdefault(span.parent_span_id, []).append(span.span_id)
        else:
            roots.append(span.span_id)

    # Built bottom-up without recursion: a trace may be thousands of spans deep.
    def build(span_id: str) -> pb.SpanNode:
        stack = [(span_id, False)]
        built: dict[str, pb.SpanNode] = {}
        while stack:
            current, expanded = stack.pop()
            kids = children.get(current, [])
            if expanded:
                node = pb.SpanNode(span=nodes[current].span)
                node.children.extend(built.pop(kid) for kid in kids)
                built[current] = node
            else:
                stack.append((current, True))
                stack.extend((kid, False) for kid in reversed(kids))
        return built[span_id]

    return [build(root) for root in roots]


def _analytics_row(row: analytics.Row) -> api.AnalyticsRow:
    def percentiles(values: dict[int, float]) -> api.Percentiles:
        return api.Percentiles(
            p50=values.get(50, 0.0), p95=values.get(95, 0.0), p99=values.get(99, 0.0)
        )

    return api.AnalyticsRow(
        group=row.group,
        count=row.count,
        error_rate=row.error_rate,
        latency_ms=percentiles(row.latency),
        time_to_first_token_ms=percentiles(row.ttft),
        mean_tokens_per_second=row.mean_tokens_per_second,
        total_cost_usd=row.total_cost_usd,
        mean_cost_usd=row.mean_cost_usd,
        cache_hit_ratio=row.cache_hit_ratio,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
    )


def _rejections(refused: Iterable[Rejected]) -> Iterable[api.Rejection]:
    for r in refused:
        yield api.Rejection(
            index=r.index, trace_id=r.trace_id, span_id=r.span_id, field=r.field, reason=r.reason
        )
