"""Following the tracing service's changes (ListSpanChanges), FindTraces, and the score filters
and evaluation fields, over real gRPC on both backends.

Most tests drive the servicer's clock by hand: a span is stamped with it, and a follower is
served a span only once the settle time has passed since its stamp. The concurrency test runs
on the real clock, with many writers committing while a follower reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from services.common.client import open_channel
from services.common.db import Database
from services.common.errors import RemoteError
from services.common.identity import USER_KEY
from services.common.server import start
from services.tracing.server import utc_now
from services.tracing.service import MIGRATIONS, server_spec
from services.tracing.settings import TracingSettings
from tests.conftest import INTERNAL_TOKEN, new_user
from tests.contract.conftest import Clock, rpc_error
from tests.contract.test_tracing_service import span
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

SETTLE = 5.0


@dataclass
class Feed:
    stub: api_grpc.TracingServiceAsyncStub
    clock: Clock
    user: str

    def as_(self, user: str | None = None) -> tuple[tuple[str, bytes], ...]:
        return ((USER_KEY, (user or self.user).encode()),)

    async def ingest(self, *spans: pb.Span, user: str | None = None) -> None:
        reply = await self.stub.IngestSpans(
            api.IngestSpansRequest(spans=spans), metadata=self.as_(user)
        )
        assert reply.accepted == len(spans), reply.rejected

    async def changes(
        self, cursor: str = "", page_size: int = 0, **where: Any
    ) -> api.ListSpanChangesResponse:
        return await self.stub.ListSpanChanges(
            api.ListSpanChangesRequest(
                filter=json_format.ParseDict(where, api.SpanFilter()),
                cursor=cursor,
                page_size=page_size,
            ),
            metadata=self.as_(),
        )

    async def follow(
        self, cursor: str = "", page_size: int = 10, **where: Any
    ) -> tuple[list[str], str]:
        """Every settled change after `cursor`, page by page: span ids, and the cursor after."""
        seen: list[str] = []
        while True:
            reply = await self.changes(cursor, page_size, **where)
            assert reply.next_cursor
            assert len(reply.spans) <= page_size
            seen.extend(s.span_id for s in reply.spans)
            cursor = reply.next_cursor
            if reply.caught_up:
                return seen, cursor

    async def listed(self, **where: Any) -> set[str]:
        reply = await self.stub.ListSpans(
            api.ListSpansRequest(
                filter=json_format.ParseDict(where, api.SpanFilter()), page_size=500
            ),
            metadata=self.as_(),
        )
        return {s.span_id for s in reply.spans}

    async def annotate(self, trace_id: str, span_id: str, **evaluation: Any) -> pb.Span:
        reply = await self.stub.AnnotateSpan(
            api.AnnotateSpanRequest(
                trace_id=trace_id,
                span_id=span_id,
                evaluation=json_format.ParseDict(evaluation, pb.Evaluation()),
            ),
            metadata=self.as_(),
        )
        return reply.span


async def serve(database_url: str, settle: float, clock: Clock | None) -> AsyncIterator[Feed]:
    """The service with this settle time, on `clock` (None: the real one)."""
    settings = TracingSettings(
        database_url=database_url,
        internal_token=INTERNAL_TOKEN,
        ingest_workers=0,
        follow_settle_seconds=settle,
    )
    db = Database(settings.database_url)
    await MIGRATIONS.upgrade(db)
    running = await start(server_spec(settings, db, clock=clock or utc_now, address="127.0.0.1:0"))
    channel = open_channel(f"127.0.0.1:{running.port}", INTERNAL_TOKEN)
    try:
        yield Feed(api_grpc.TracingServiceStub(channel), clock or Clock(), new_user())
    finally:
        await channel.close()
        await running.stop()
        await db.close()


@pytest.fixture
async def feed(empty_db_url: str) -> AsyncIterator[Feed]:
    async for served in serve(empty_db_url, SETTLE, Clock()):
        yield served


def settle(feed: Feed) -> None:
    feed.clock.advance(SETTLE + 1)


def invalid(error: grpc.aio.AioRpcError, field: str) -> RemoteError:
    remote = RemoteError.from_rpc_error(error)
    assert remote.code == grpc.StatusCode.INVALID_ARGUMENT, remote
    assert remote.metadata.get("field") == field, remote
    return remote


async def test_following_from_the_start_page_by_page_then_resuming(feed: Feed) -> None:
    for batch in range(5):
        await feed.ingest(*[span("tf", f"s{batch}{i}", start_ms=-i) for i in range(5)])
        feed.clock.advance(1)
    settle(feed)
    first = await feed.changes(page_size=10)
    assert [s.span_id for s in first.spans] == [f"s0{i}" for i in range(5)] + [
        f"s1{i}" for i in range(5)
    ]
    assert not first.caught_up
    rest, cursor = await feed.follow(first.next_cursor, page_size=10)
    assert rest == [f"s{b}{i}" for b in range(2, 5) for i in range(5)]
    # Nothing new: the same place back, caught up.
    again = await feed.changes(cursor)
    assert (list(again.spans), again.next_cursor, again.caught_up) == ([], cursor, True)
    # New spans: a resumed cursor serves them, and only them.
    await feed.ingest(*[span("tf", f"n{i}") for i in range(3)])
    settle(feed)
    assert await feed.follow(cursor) == ([f"n{i}" for i in range(3)], (await feed.follow())[1])


async def test_an_empty_feed_still_answers_a_cursor(feed: Feed) -> None:
    reply = await feed.changes()
    assert (list(reply.spans), reply.caught_up) == ([], True)
    assert reply.next_cursor
    await feed.ingest(span("te", "s"))
    settle(feed)
    assert await feed.follow(reply.next_cursor) == (["s"], (await feed.follow())[1])


async def test_page_sizes(feed: Feed) -> None:
    for part in range(2):
        await feed.ingest(*[span("tz", f"s{part}-{i:03}") for i in range(550)])
    settle(feed)
    assert len((await feed.changes()).spans) == 100
    assert len((await feed.changes(page_size=5000)).spans) == 1000
    invalid(await rpc_error(feed.changes(page_size=-1)), "page_size")


async def test_a_page_is_cut_short_to_fit_one_answer(feed: Feed) -> None:
    big = "x" * (900 * 1024)
    for i in range(12):
        await feed.ingest(span("tw", f"s{i:02}", output={"text": big}))
    settle(feed)
    first = await feed.changes(page_size=50)
    assert 0 < len(first.spans) < 12
    assert not first.caught_up
    rest, _ = await feed.follow(first.next_cursor, page_size=50)
    assert [s.span_id for s in first.spans] + rest == [f"s{i:02}" for i in range(12)]


async def test_a_span_changed_again_is_served_again(feed: Feed) -> None:
    await feed.ingest(*[span("tc", f"s{i}") for i in range(3)])
    settle(feed)
    seen, cursor = await feed.follow()
    assert seen == ["s0", "s1", "s2"]
    # Merged (a later part), then annotated: each comes again, once, in the order changed.
    await feed.ingest(span("tc", "s2", tags=["later"]))
    feed.clock.advance(1)
    await feed.annotate("tc", "s0", eval_score=0.7, judgment_id="jdg_1")
    settle(feed)
    reply = await feed.changes(cursor)
    assert [s.span_id for s in reply.spans] == ["s2", "s0"]
    assert list(reply.spans[0].tags) == ["later"]
    assert reply.spans[1].evaluation.judgment_id == "jdg_1"
    assert reply.caught_up
    assert (await feed.follow(reply.next_cursor))[0] == []


async def test_recent_changes_are_held_back_until_they_settle(feed: Feed) -> None:
    await feed.ingest(span("th", "early"))
    feed.clock.advance(3)
    await feed.ingest(span("th", "late"))
    feed.clock.advance(SETTLE - 3 - 0.001)
    reply = await feed.changes()
    assert (list(reply.spans), reply.caught_up) == ([], True)
    feed.clock.advance(0.001)  # `early` is exactly settle seconds old now
    reply = await feed.changes(reply.next_cursor)
    assert [s.span_id for s in reply.spans] == ["early"]
    assert reply.caught_up
    feed.clock.advance(3)
    assert (await feed.follow(reply.next_cursor))[0] == ["late"]


async def test_no_settle_time(empty_db_url: str) -> None:
    async for feed in serve(empty_db_url, 0, Clock()):
        await feed.ingest(span("t0", "s"))
        assert (await feed.follow())[0] == ["s"]


async def test_another_users_spans_never_appear(feed: Feed) -> None:
    await feed.ingest(span("tu", "mine"))
    await feed.ingest(span("tu", "theirs"), span("tv", "theirs-too"), user="eve")
    settle(feed)
    seen, cursor = await feed.follow()
    assert seen == ["mine"]
    await feed.ingest(span("tu", "theirs", tags=["changed"]), user="eve")
    settle(feed)
    assert (await feed.follow(cursor))[0] == []


async def test_filters_apply_and_unmatched_changes_are_passed_over(feed: Feed) -> None:
    await feed.ingest(
        span("tm", "a", model="gpt-4o"),
        span("tm", "b", model="claude-3-5-haiku"),
        span("tm", "c", model="gpt-4o", evaluation={"groundedness_score": 0.9}),
    )
    settle(feed)
    assert (await feed.follow(model="gpt-4o"))[0] == ["a", "c"]
    assert (await feed.follow(min_groundedness=0.5))[0] == ["c"]
    _, cursor = await feed.follow(model="gpt-4o")
    # Only unmatched changes since: the cursor moves past them.
    await feed.ingest(*[span("tm", f"other{i}", model="o1") for i in range(5)])
    settle(feed)
    reply = await feed.changes(cursor, model="gpt-4o")
    assert (list(reply.spans), reply.caught_up) == ([], True)
    assert reply.next_cursor != cursor
    await feed.annotate("tm", "a", eval_score=0.1)
    settle(feed)
    assert (await feed.follow(reply.next_cursor, model="gpt-4o"))[0] == ["a"]
    # A cursor is a place in one filter's feed.
    other = await rpc_error(feed.changes(cursor, model="o1"))
    assert "next_cursor" in invalid(other, "cursor").message


def _forged(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "%%%",
        "A" * 2000,
        _forged(["2026-11-28T12:00:00+00:00", "1", "spans:0000000000000000"]),
        _forged(["2026-11-28T12:00:00+00:00", "x", "span-changes:" + "0" * 16]),
        _forged({"updated_at": "2026-11-28T12:00:00+00:00"}),
    ],
)
async def test_a_forged_cursor_is_refused(feed: Feed, cursor: str) -> None:
    error = invalid(await rpc_error(feed.changes(cursor)), "cursor")
    assert "leave it empty" in error.message


async def test_a_cursor_with_an_id_out_of_range_is_refused(feed: Feed) -> None:
    # The real scope, with an id no row can have: refused here, not by the database.
    _, cursor = await feed.follow()
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for bad in (str(2**64), "-1"):
        forged = _forged([raw[0], bad, raw[2]])
        invalid(await rpc_error(feed.changes(forged)), "cursor")
    listed = await feed.stub.ListSpans(api.ListSpansRequest(), metadata=feed.as_())
    assert list(listed.spans) == []


@pytest.fixture
async def real_time(empty_db_url: str) -> AsyncIterator[Feed]:
    async for served in serve(empty_db_url, 1.0, None):
        yield served


async def test_followers_miss_nothing_while_many_writers_commit(real_time: Feed) -> None:
    """Writers insert and merge spans concurrently on the real clock while a follower reads
    with a short settle time: every span stored is served at least once."""
    feed, writers, batches, per_batch = real_time, 8, 12, 10
    done = asyncio.Event()
    seen: set[str] = set()

    async def write(w: int) -> None:
        for b in range(batches):
            fresh = [span("tx", f"w{w}-b{b}-s{i}") for i in range(per_batch)]
            # And a later part of a span written before: an update of an older row.
            merged = [span("tx", f"w{w}-b{b - 1}-s0", tags=[f"b{b}"])] if b else []
            await feed.ingest(*fresh, *merged)

    async def follow() -> None:
        cursor = ""
        while True:
            finished = done.is_set()
            reply = await feed.changes(cursor, page_size=25)
            seen.update(s.span_id for s in reply.spans)
            cursor = reply.next_cursor
            if reply.caught_up:
                if finished:
                    return
                await asyncio.sleep(0.01)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(w) for w in range(writers)))
    await asyncio.sleep(1.1)  # every write settled
    done.set()
    await asyncio.wait_for(reader, 30)
    expected = {
        f"w{w}-b{b}-s{i}" for w in range(writers) for b in range(batches) for i in range(per_batch)
    }
    assert expected - seen == set()


async def test_find_traces(feed: Feed) -> None:
    await feed.ingest(span("t1", "s"), span("t2", "s"), span("t2", "s2"))
    await feed.ingest(span("t3", "s"), user="eve")

    async def found(*trace_ids: str) -> list[str]:
        reply = await feed.stub.FindTraces(
            api.FindTracesRequest(trace_ids=trace_ids), metadata=feed.as_()
        )
        return list(reply.trace_ids)

    assert await found("t2", "t3", "t1", "nope", "t2", "bad id!", "x" * 100) == ["t2", "t1"]
    assert await found() == []
    many = [f"t{i}" for i in range(1000)]
    assert await found(*many) == ["t1", "t2"]
    too_many = await rpc_error(found(*many, "t1000"))
    assert "at most 1000" in invalid(too_many, "trace_ids").message


async def test_score_filters(feed: Feed) -> None:
    await feed.ingest(
        span("ts", "low", evaluation={"groundedness_score": 0.2, "eval_score": 0.9}),
        span("ts", "high", evaluation={"groundedness_score": 0.8}),
        span("ts", "edge", evaluation={"groundedness_score": 0.5, "eval_score": 0.5}),
        span("ts", "none"),
    )
    await feed.annotate("ts", "high", eval_score=0.3, eval_passed=False)
    assert await feed.listed(min_groundedness=0.5) == {"high", "edge"}
    assert await feed.listed(groundedness_below=0.5) == {"low"}
    assert await feed.listed(min_eval_score=0.5) == {"low", "edge"}
    assert await feed.listed(eval_score_below=0.5) == {"high"}
    assert await feed.listed(min_eval_score=0.4, eval_score_below=0.6) == {"edge"}
    assert await feed.listed(min_groundedness=0, min_eval_score=0) == {"low", "edge", "high"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_groundedness", 1.5),
        ("min_groundedness", math.nan),
        ("min_eval_score", -0.1),
        ("min_eval_score", math.inf),
        ("eval_score_below", 2.0),
        ("groundedness_below", math.nan),
        ("min_duration_ms", math.nan),
        ("min_cost_usd", -math.inf),
    ],
)
async def test_filter_numbers_that_cannot_be_compared_are_refused(
    feed: Feed, name: str, value: float
) -> None:
    where = api.SpanFilter()
    setattr(where, name, value)
    calls = [
        feed.stub.ListSpans(api.ListSpansRequest(filter=where), metadata=feed.as_()),
        feed.stub.ListSpanChanges(api.ListSpanChangesRequest(filter=where), metadata=feed.as_()),
        feed.stub.GetAnalytics(api.GetAnalyticsRequest(filter=where), metadata=feed.as_()),
    ]
    for call in calls:
        assert name in invalid(await rpc_error(call), f"filter.{name}").message
    export = feed.stub.ExportSpans(
        api.ExportSpansRequest(filter=where), metadata=feed.as_(), timeout=60
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in export:
            pass
    invalid(caught.value, f"filter.{name}")


async def test_annotation_stores_the_judgment(feed: Feed) -> None:
    await feed.ingest(span("tj", "s", evaluation={"groundedness_score": 0.4}))
    annotated = await feed.annotate(
        "tj", "s", eval_score=0.85, eval_passed=True, judgment_id="jdg_01HX-abc"
    )
    evaluation = annotated.evaluation
    assert evaluation.groundedness_score == pytest.approx(0.4)  # merged, not replaced
    assert evaluation.eval_score == pytest.approx(0.85)
    assert evaluation.eval_passed
    assert evaluation.judgment_id == "jdg_01HX-abc"
    assert await feed.listed(min_eval_score=0.8) == {"s"}
    # A later judgment replaces the score; the column follows.
    await feed.annotate("tj", "s", eval_score=0.1, eval_passed=False, judgment_id="jdg_2")
    assert await feed.listed(min_eval_score=0.8) == set()
    assert await feed.listed(eval_score_below=0.2) == {"s"}
    reply = await feed.stub.GetTrace(api.GetTraceRequest(trace_id="tj"), metadata=feed.as_())
    stored = reply.roots[0].span.evaluation
    assert (stored.eval_passed, stored.judgment_id) == (False, "jdg_2")


@pytest.mark.parametrize(
    ("evaluation", "field"),
    [
        ({"eval_score": 1.5}, "evaluation.eval_score"),
        ({"eval_score": -0.5}, "evaluation.eval_score"),
        ({"eval_score": "NaN"}, "evaluation.eval_score"),
        ({"judgment_id": "bad id!"}, "evaluation.judgment_id"),
        ({"judgment_id": "j" * 65}, "evaluation.judgment_id"),
        ({"judgment_id": "sk-proj-" + "A1b2C3d4" * 6}, "evaluation.judgment_id"),
    ],
)
async def test_bad_judgments_are_refused(
    feed: Feed, evaluation: dict[str, Any], field: str
) -> None:
    await feed.ingest(span("tb", "s"))
    invalid(await rpc_error(feed.annotate("tb", "s", **evaluation)), field)
    # From a producer, the same span part is rejected with the same field.
    reply = await feed.stub.IngestSpans(
        api.IngestSpansRequest(spans=[span("tb", "p", evaluation=evaluation)]),
        metadata=feed.as_(),
    )
    assert [r.field for r in reply.rejected] == [field]


async def test_parts_merged_at_the_same_instant_lose_nothing(feed: Feed) -> None:
    """The clock stands still here: each write still changes updated_at, which is how a merge
    sees that another changed the span since it read it."""
    await feed.ingest(span("tq", "s"))
    parts = [span("tq", "s", tags=[f"tag-{i}"]) for i in range(6)]
    await asyncio.gather(*(feed.ingest(part) for part in parts))
    reply = await feed.stub.GetTrace(api.GetTraceRequest(trace_id="tq"), metadata=feed.as_())
    assert sorted(reply.roots[0].span.tags) == sorted(f"tag-{i}" for i in range(6))
