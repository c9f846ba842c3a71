"""The tracing service over real gRPC on both backends: ingest (idempotent, merged, completed,
sanitized), the span tree, lists with filters and stable pages, analytics, export, annotation
and retention."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import select

from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.server import start
from services.tracing.models import SpanRow
from services.tracing.service import MIGRATIONS, server_spec
from services.tracing.settings import TracingSettings
from tests.conftest import INTERNAL_TOKEN, new_user
from tests.contract.conftest import rpc_error
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SECRETS = [
    "sk-proj-" + "A1b2C3d4" * 6,
    "sk-ant-api03-" + "Z9y8X7w6" * 8,
    "hf_" + "q" * 34,
    "hunter2-password-value",
]


def span(trace: str, span_id: str, parent: str = "", start_ms: float = 0, **fields: Any) -> pb.Span:
    data: dict[str, Any] = {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": fields.pop("name", "chat"),
        "timing": {"start_time": (T0 + timedelta(milliseconds=start_ms)).isoformat()},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return json_format.ParseDict(data, pb.Span())


def end(start_ms: float, duration_ms: float) -> str:
    return (T0 + timedelta(milliseconds=start_ms + duration_ms)).isoformat()


@dataclass
class Tracing:
    stub: api_grpc.TracingServiceAsyncStub
    db: Database
    user: str

    def as_(self, user: str | None = None) -> tuple[tuple[str, bytes], ...]:
        return ((USER_KEY, (user or self.user).encode()),)

    async def ingest(self, *spans: pb.Span, user: str | None = None) -> api.IngestSpansResponse:
        return await self.stub.IngestSpans(
            api.IngestSpansRequest(spans=spans), metadata=self.as_(user)
        )

    async def listed(self, **where: Any) -> list[pb.Span]:
        found: list[pb.Span] = []
        token = ""
        while True:
            reply = await self.stub.ListSpans(
                api.ListSpansRequest(
                    filter=json_format.ParseDict(where, api.SpanFilter()),
                    page_size=7,
                    page_token=token,
                ),
                metadata=self.as_(),
            )
            found.extend(reply.spans)
            if not (token := reply.next_page_token):
                return found

    async def exported(self, fmt: api.ExportFormat.ValueType, **where: Any) -> str:
        call = self.stub.ExportSpans(
            api.ExportSpansRequest(
                filter=json_format.ParseDict(where, api.SpanFilter()), format=fmt
            ),
            metadata=self.as_(),
            timeout=60,
        )
        return b"".join([m.data async for m in call]).decode()


async def serve(database_url: str, workers: int) -> AsyncIterator[Tracing]:
    settings = TracingSettings(
        database_url=database_url, internal_token=INTERNAL_TOKEN, ingest_workers=workers
    )
    db = Database(settings.database_url)
    await MIGRATIONS.upgrade(db)
    running = await start(server_spec(settings, db, address="127.0.0.1:0"))
    channel = open_channel(f"127.0.0.1:{running.port}", INTERNAL_TOKEN)
    try:
        yield Tracing(api_grpc.TracingServiceStub(channel), db, new_user())
    finally:
        await channel.close()
        await running.stop()
        await db.close()


@pytest.fixture
async def tracing(empty_db_url: str) -> AsyncIterator[Tracing]:
    # In process: workers would start with every test (the worker path has its own tests).
    async for served in serve(empty_db_url, workers=0):
        yield served


def trace_of_three(trace: str = "t1") -> list[pb.Span]:
    return [
        span(trace, "root", name="agent", kind="SPAN_KIND_AGENT"),
        span(trace, "retrieve", "root", 10, kind="SPAN_KIND_RETRIEVAL"),
        span(
            trace,
            "llm",
            "root",
            20,
            model="gpt-4o",
            provider="openai",
            timing={"end_time": end(20, 1000), "time_to_first_token_ms": 200},
            usage={"input_tokens": 1000, "output_tokens": 400},
        ),
    ]


async def test_a_retried_batch_adds_nothing(tracing: Tracing) -> None:
    batch = trace_of_three()
    first = await tracing.ingest(*batch)
    again = await tracing.ingest(*batch)
    assert first.accepted == again.accepted == 3
    assert len(await tracing.listed()) == 3


async def test_a_span_sent_in_two_parts_is_merged_and_completed(tracing: Tracing) -> None:
    await tracing.ingest(span("t2", "s", model="gpt-4o-2024-08-06", tags=["a"]))
    await tracing.ingest(
        span(
            "t2",
            "s",
            timing={"end_time": end(0, 2000), "time_to_first_token_ms": 500},
            usage={"input_tokens": 2000, "output_tokens": 300, "cache_read_input_tokens": 1000},
            tags=["b", "a"],
        )
    )
    (stored,) = await tracing.listed(trace_id="t2")
    assert stored.model == "gpt-4o-2024-08-06"  # from the first part
    assert stored.timing.duration_ms == pytest.approx(2000)
    assert stored.timing.tokens_per_second == pytest.approx(300 / 1.5)
    assert stored.usage.total_tokens == 2300
    # gpt-4o: 1000 uncached at $2.50/M, 1000 cached at $1.25/M, 300 out at $10/M.
    assert stored.cost.total_usd == pytest.approx(0.0025 + 0.00125 + 0.003)
    assert set(stored.computed) >= {"timing.duration_ms", "cost.total_usd"}
    assert list(stored.tags) == ["a", "b"]
    # A cost the producer sends wins over the computed one, even later.
    await tracing.ingest(span("t2", "s", cost={"total_usd": 0.5}))
    (stored,) = await tracing.listed(trace_id="t2")
    assert stored.cost.total_usd == 0.5
    assert "cost.total_usd" not in stored.computed


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"trace_id": "has spaces"}, "trace_id"),
        ({"span_id": ""}, "span_id"),
        ({"parent_span_id": "x"}, "parent_span_id"),  # itself
        ({"usage": {"input_tokens": -1}}, "usage.input_tokens"),
        ({"timing": {"duration_ms": "NaN"}}, "timing.duration_ms"),
        ({"evaluation": {"groundedness_score": 1.5}}, "evaluation.groundedness_score"),
        ({"tags": ["t"] * 33}, "tags"),
        ({"timing": {"end_time": "1999-01-01T00:00:00Z"}}, "timing.end_time"),
        ({"timing": {"end_time": (T0 - timedelta(seconds=1)).isoformat()}}, "timing.end_time"),
        ({"model": "m" * 300}, "model"),
    ],
)
async def test_bad_spans_are_rejected_one_by_one(
    tracing: Tracing, changes: dict[str, Any], field: str
) -> None:
    bad = json_format.ParseDict(changes, span("tb", "x"))
    reply = await tracing.ingest(span("tb", "good1"), bad, span("tb", "good2"))
    assert reply.accepted == 2
    (rejection,) = reply.rejected
    assert rejection.index == 1
    assert rejection.field == field
    assert rejection.reason
    assert {s.span_id for s in await tracing.listed(trace_id="tb")} == {"good1", "good2"}


async def test_a_span_with_no_start_is_rejected(tracing: Tracing) -> None:
    headless = pb.Span(trace_id="tn", span_id="s")
    reply = await tracing.ingest(headless)
    assert reply.rejected[0].field == "timing.start_time"


async def test_credentials_never_reach_the_database_or_any_answer(tracing: Tracing) -> None:
    key, anthropic, hf, password = SECRETS
    planted = span(
        "ts",
        "s",
        status="SPAN_STATUS_ERROR",
        status_message=f"401 from upstream with key {hf}",
        request={
            "base_url": f"https://api.openai.com/v1?api_key={key}&model=x",
            "headers": {"Authorization": f"Bearer {key}", "X-Api-Key": anthropic, "Accept": "*/*"},
        },
        input={"messages": [{"role": "user", "content": f"my key is {anthropic}"}]},
        output={"text": "ok"},
        metadata={"password": password, "nested": {"client_secret": password}},
    )
    assert (await tracing.ingest(planted)).accepted == 1
    async with tracing.db.session() as session:
        raw = " ".join((await session.scalars(select(SpanRow.body))).all())
    answers = [
        raw,
        str(await tracing.listed()),
        str(
            await tracing.stub.GetTrace(api.GetTraceRequest(trace_id="ts"), metadata=tracing.as_())
        ),
        await tracing.exported(api.EXPORT_FORMAT_CSV),
        await tracing.exported(api.EXPORT_FORMAT_JSONL),
    ]
    for text in answers:
        for secret in SECRETS:
            assert secret not in text
    (stored,) = await tracing.listed(trace_id="ts")
    assert stored.request.headers["Accept"] == "*/*"
    assert "model=x" in stored.request.base_url


async def test_a_trace_is_a_tree_and_only_its_owner_sees_it(tracing: Tracing) -> None:
    await tracing.ingest(*trace_of_three("tt"))
    reply = await tracing.stub.GetTrace(api.GetTraceRequest(trace_id="tt"), metadata=tracing.as_())
    assert reply.span_count == 3
    (root,) = reply.roots
    assert root.span.span_id == "root"
    assert [c.span.span_id for c in root.children] == ["retrieve", "llm"]
    other = await rpc_error(
        tracing.stub.GetTrace(api.GetTraceRequest(trace_id="tt"), metadata=tracing.as_("eve"))
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND


async def test_filters(tracing: Tracing) -> None:
    await tracing.ingest(*trace_of_three("tf1"))
    await tracing.ingest(
        span(
            "tf2",
            "only",
            model="claude-3-5-haiku",
            provider="anthropic",
            status="SPAN_STATUS_ERROR",
            error_category="rate_limit",
            timing={"end_time": end(0, 5000)},
            flags={"warnings": ["slow_response"]},
            streaming={"enabled": True},
            session={"session_id": "chat-1"},
            tags=["prod", "exp-7"],
            evaluation={"groundedness_score": 0.2},
        )
    )

    async def ids(**where: Any) -> set[str]:
        return {s.span_id for s in await tracing.listed(**where)}

    assert await ids(model="gpt-4o") == {"llm"}
    assert await ids(provider="anthropic") == {"only"}
    assert await ids(status="SPAN_STATUS_ERROR", error_category="rate_limit") == {"only"}
    assert await ids(min_duration_ms=2000) == {"only"}
    assert await ids(has_warnings=True) == {"only"}
    assert await ids(streaming=True) == {"only"}
    assert await ids(session_id="chat-1") == {"only"}
    assert await ids(tags=["prod", "exp-7"]) == {"only"}
    assert await ids(tags=["prod", "nope"]) == set()
    assert await ids(groundedness_below=0.5) == {"only"}
    assert await ids(roots_only=True) == {"root", "only"}
    assert await ids(kind="SPAN_KIND_RETRIEVAL") == {"retrieve"}
    assert await ids(min_cost_usd=0.000001) == {"llm"}  # haiku's span has no tokens: no cost
    assert await ids(start_time_from=end(0, 5)) == {"retrieve", "llm"}
    assert await ids(start_time_from=end(0, 5), start_time_to=end(0, 15)) == {"retrieve"}


async def test_pages_stay_stable_while_spans_arrive(tracing: Tracing) -> None:
    await tracing.ingest(*[span("tp", f"s{i:02}", start_ms=i) for i in range(10)])
    first = await tracing.stub.ListSpans(api.ListSpansRequest(page_size=4), metadata=tracing.as_())
    # Newer spans arrive: the next page goes on where the first stopped.
    await tracing.ingest(*[span("tp", f"n{i}", start_ms=100 + i) for i in range(5)])
    seen = [s.span_id for s in first.spans]
    token = first.next_page_token
    while token:
        reply = await tracing.stub.ListSpans(
            api.ListSpansRequest(page_size=4, page_token=token), metadata=tracing.as_()
        )
        seen.extend(s.span_id for s in reply.spans)
        token = reply.next_page_token
    assert seen == [f"s{i:02}" for i in reversed(range(10))]
    stolen = await rpc_error(
        tracing.stub.ListSpans(
            api.ListSpansRequest(
                page_token=first.next_page_token, filter=api.SpanFilter(model="x")
            ),
            metadata=tracing.as_(),
        )
    )
    assert stolen.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_analytics_in_the_database(tracing: Tracing) -> None:
    spans_ = [
        span(
            "ta",
            f"s{i}",
            start_ms=i,
            model="gpt-4o" if i % 2 else "gpt-4o-mini",
            provider="openai",
            status="SPAN_STATUS_ERROR" if i % 10 == 0 else "SPAN_STATUS_OK",
            timing={"duration_ms": float(i), "time_to_first_token_ms": float(i) / 10},
            usage={"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 25},
            cost={"total_usd": 0.01},
        )
        for i in range(1, 101)
    ]
    assert (await tracing.ingest(*spans_)).accepted == 100
    (row,) = (
        await tracing.stub.GetAnalytics(api.GetAnalyticsRequest(), metadata=tracing.as_())
    ).rows
    assert row.count == 100
    assert row.error_rate == pytest.approx(0.10)
    assert (row.latency_ms.p50, row.latency_ms.p95, row.latency_ms.p99) == (50, 95, 99)
    assert row.time_to_first_token_ms.p95 == pytest.approx(9.5)
    assert row.total_cost_usd == pytest.approx(1.0)
    assert row.mean_cost_usd == pytest.approx(0.01)
    assert row.cache_hit_ratio == pytest.approx(0.25)
    assert row.input_tokens == 10_000
    by_model = await tracing.stub.GetAnalytics(
        api.GetAnalyticsRequest(group_by=api.ANALYTICS_GROUP_MODEL), metadata=tracing.as_()
    )
    groups = {r.group: r for r in by_model.rows}
    assert set(groups) == {"gpt-4o", "gpt-4o-mini"}
    assert groups["gpt-4o"].count == 50
    assert groups["gpt-4o"].latency_ms.p50 == 49  # odd durations 1..99: the 25th is 49
    by_hour = await tracing.stub.GetAnalytics(
        api.GetAnalyticsRequest(group_by=api.ANALYTICS_GROUP_HOUR), metadata=tracing.as_()
    )
    assert [r.group for r in by_hour.rows] == ["2026-11-28T12:00:00Z"]


async def test_exports_read_back_with_standard_parsers(tracing: Tracing) -> None:
    await tracing.ingest(*trace_of_three("te"))
    await tracing.ingest(span("te2", "formula", name='=HYPERLINK("http://evil")'))
    rows = list(csv.DictReader(io.StringIO(await tracing.exported(api.EXPORT_FORMAT_CSV))))
    assert len(rows) == 4
    llm = next(r for r in rows if r["span_id"] == "llm")
    assert llm["model"] == "gpt-4o"
    assert float(llm["duration_ms"]) == pytest.approx(1000)
    assert llm["kind"] == "unspecified"
    assert next(r for r in rows if r["span_id"] == "formula")["name"].startswith("'=")
    as_json = json.loads(await tracing.exported(api.EXPORT_FORMAT_JSON, trace_id="te"))
    assert [s["span_id"] for s in as_json] == ["root", "retrieve", "llm"]
    assert as_json[0]["kind"] == "agent"
    lines = (await tracing.exported(api.EXPORT_FORMAT_JSONL, model="gpt-4o")).splitlines()
    assert [json.loads(line)["usage"]["output_tokens"] for line in lines] == ["400"]
    assert json.loads(await tracing.exported(api.EXPORT_FORMAT_JSON, model="none")) == []


async def test_annotation_writes_the_evaluation_back(tracing: Tracing) -> None:
    await tracing.ingest(*trace_of_three("tn"))
    reply = await tracing.stub.AnnotateSpan(
        api.AnnotateSpanRequest(
            trace_id="tn", span_id="llm", evaluation=pb.Evaluation(groundedness_score=0.3)
        ),
        metadata=tracing.as_(),
    )
    assert reply.span.evaluation.groundedness_score == pytest.approx(0.3)
    assert reply.span.cost.total_usd > 0  # still completed
    assert {s.span_id for s in await tracing.listed(groundedness_below=0.5)} == {"llm"}
    other = await rpc_error(
        tracing.stub.AnnotateSpan(
            api.AnnotateSpanRequest(trace_id="tn", span_id="llm"), metadata=tracing.as_("eve")
        )
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND
    bad = await rpc_error(
        tracing.stub.AnnotateSpan(
            api.AnnotateSpanRequest(
                trace_id="tn", span_id="llm", evaluation=pb.Evaluation(groundedness_score=2)
            ),
            metadata=tracing.as_(),
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retention_deletes_only_older_spans_of_the_caller(tracing: Tracing) -> None:
    await tracing.ingest(span("old", "a", start_ms=0), span("new", "b", start_ms=60_000))
    await tracing.ingest(span("old", "a", start_ms=0), user="eve")
    reply = await tracing.stub.DeleteSpans(
        api.DeleteSpansRequest(started_before=_timestamp(T0 + timedelta(seconds=1))),
        metadata=tracing.as_(),
    )
    assert reply.deleted == 1
    assert [s.span_id for s in await tracing.listed()] == ["b"]


async def test_a_stream_of_batches(tracing: Tracing) -> None:
    async def batches() -> AsyncIterator[api.StreamSpansRequest]:
        yield api.StreamSpansRequest(spans=trace_of_three("tq"))
        yield api.StreamSpansRequest(spans=[span("tq", "bad id!"), span("tq", "more")])

    reply = await tracing.stub.StreamSpans(batches(), metadata=tracing.as_(), timeout=60)
    assert reply.accepted == 4
    assert [r.index for r in reply.rejected] == [3]


def _timestamp(when: datetime) -> Any:
    stamp = pb.Timing().start_time
    stamp.FromDatetime(when)
    return stamp


async def test_page_tokens_stay_short_whatever_the_filter(tracing: Tracing) -> None:
    long_tags = [f"{i:02d}" + "t" * 126 for i in range(30)]
    await tracing.ingest(*[span("tl", f"s{i}", start_ms=i, tags=long_tags) for i in range(9)])
    assert len(await tracing.listed(tags=long_tags)) == 9  # two pages of at most 7


async def test_parts_merged_at_the_same_time_lose_nothing(tracing: Tracing) -> None:
    await tracing.ingest(span("tc", "s"))
    parts = [span("tc", "s", tags=[f"tag-{i}"]) for i in range(6)]
    replies = await asyncio.gather(*(tracing.ingest(part) for part in parts))
    assert all(reply.accepted == 1 for reply in replies)
    (stored,) = await tracing.listed(trace_id="tc")
    assert sorted(stored.tags) == sorted(f"tag-{i}" for i in range(6))


async def test_parts_of_a_new_span_sent_at_the_same_time_make_one_span(tracing: Tracing) -> None:
    # Each batch finds nothing stored and inserts; all but one hit the unique key and merge.
    parts = [span("tn2", "s", tags=[f"tag-{i}"]) for i in range(6)]
    replies = await asyncio.gather(*(tracing.ingest(part, *trace_of_three()) for part in parts))
    assert all(reply.accepted == 4 for reply in replies)
    (stored,) = await tracing.listed(trace_id="tn2")
    assert sorted(stored.tags) == sorted(f"tag-{i}" for i in range(6))
    assert len(await tracing.listed(trace_id="t1")) == 3


async def test_hostile_ids_computed_fields_and_score_names(tracing: Tracing) -> None:
    key = SECRETS[0]
    reply = await tracing.ingest(span(key[:60], "s"), span("ok", "Bearer " + "x" * 20))
    assert [r.field for r in reply.rejected] == ["trace_id", "span_id"]
    assert key[:60] not in str(reply)
    assert "x" * 20 not in str(reply)
    # A producer cannot write the service's own fields, nor break the stored JSON.
    forged = span("th", "s", computed=["nope.field"], evaluation={"scores": {"api_key": 0.5}})
    assert (await tracing.ingest(forged)).accepted == 1
    assert (await tracing.ingest(span("th", "s", tags=["later"]))).accepted == 1
    (stored,) = await tracing.listed(trace_id="th")
    assert "nope.field" not in stored.computed
    assert "api_key" not in stored.evaluation.scores
    assert list(stored.tags) == ["later"]


async def test_parts_cannot_add_up_past_the_limits(tracing: Tracing) -> None:
    await tracing.ingest(span("tl2", "s", tags=[f"a{i}" for i in range(30)]))
    reply = await tracing.ingest(span("tl2", "s", tags=[f"b{i}" for i in range(5)]))
    assert reply.rejected[0].field == "tags"


async def test_a_page_is_cut_short_to_fit_one_answer(tracing: Tracing) -> None:
    big = "x" * (900 * 1024)
    for i in range(15):
        await tracing.ingest(span("tw", f"s{i:02}", start_ms=i, output={"text": big}))
    first = await tracing.stub.ListSpans(api.ListSpansRequest(page_size=50), metadata=tracing.as_())
    assert 0 < len(first.spans) < 15
    assert first.next_page_token
    assert len(await tracing.listed(trace_id="tw")) == 15
    whole = await rpc_error(
        tracing.stub.GetTrace(api.GetTraceRequest(trace_id="tw"), metadata=tracing.as_())
    )
    assert whole.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_numbers_json_cannot_hold_and_implausible_times_are_rejected(
    tracing: Tracing,
) -> None:
    not_finite = span("tf", "nan")
    not_finite.input.struct_value["score"] = float("nan")
    future = span("tf", "late", evaluation={"evaluated_at": "2999-01-01T00:00:00Z"})
    reply = await tracing.ingest(span("tf", "good"), not_finite, future)
    assert reply.accepted == 1
    assert [(r.index, r.field) for r in reply.rejected] == [
        (1, "input"),
        (2, "evaluation.evaluated_at"),
    ]
    assert [s.span_id for s in await tracing.listed(trace_id="tf")] == ["good"]


@pytest.fixture
async def with_workers(empty_db_url: str) -> AsyncIterator[Tracing]:
    async for served in serve(empty_db_url, workers=2):
        yield served
    assert not multiprocessing.active_children(), "the workers outlived the service"


async def test_large_batches_are_prepared_in_worker_processes(with_workers: Tracing) -> None:
    tracing = with_workers
    key = SECRETS[0]
    batch = [span("tw", f"s{i:03}", start_ms=i, input={"text": f"key {key}"}) for i in range(200)]
    batch[7] = span("tw", "s007", usage={"input_tokens": -1})  # refused, whatever chunk it is in
    batch.append(span("tw", "s010", tags=["second-part"]))  # two parts of one span, one batch
    reply = await tracing.ingest(*batch)
    assert [(r.index, r.field) for r in reply.rejected] == [(7, "usage.input_tokens")]
    assert reply.accepted == 200
    assert multiprocessing.active_children(), "the batch was not sent to the workers"
    # Later parts merge onto what the workers stored.
    later = [span("tw", f"s{i:03}", timing={"end_time": end(i, 100)}) for i in range(100)]
    assert (await tracing.ingest(*later)).accepted == 100
    stored = {s.span_id: s for s in await tracing.listed(trace_id="tw")}
    assert len(stored) == 200  # s007 too now: its later part is valid on its own
    assert not stored["s007"].usage.HasField("input_tokens")
    assert list(stored["s010"].tags) == ["second-part"]
    assert stored["s050"].timing.duration_ms == pytest.approx(100)
    assert stored["s150"].timing.HasField("start_time")
    assert not stored["s150"].timing.HasField("end_time")
    assert key not in str(list(stored.values()))


async def test_a_dead_worker_costs_one_retried_batch(with_workers: Tracing) -> None:
    tracing = with_workers
    batch = [span("tk", f"s{i:03}", start_ms=i) for i in range(100)]
    assert (await tracing.ingest(*batch)).accepted == 100
    for worker in multiprocessing.active_children():
        os.kill(worker.pid or 0, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tracing.ingest(*batch)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in (caught.value.details() or "")
    later = [span("tk", f"s{i:03}", start_ms=i, tags=["after"]) for i in range(100)]
    assert (await tracing.ingest(*later)).accepted == 100  # fresh workers
    stored = await tracing.listed(trace_id="tk")
    assert len(stored) == 100
    assert all(list(s.tags) == ["after"] for s in stored)
