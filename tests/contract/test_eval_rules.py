"""Evaluation rules on both backends: following new spans with sampling, across a restart of
the eval service; jobs over history with progress, cancel and resume; judgments of deleted
traces flagged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import func, select, update

from services.eval.housekeeping import Housekeeping
from services.eval.models import JudgmentRow, RuleRow
from services.eval.rules import sampled
from tests.conftest import INTERNAL_TOKEN, new_user
from tests.contract.conftest import rpc_error
from tests.contract.eval_fixtures import T0, Suite, eval_suite, span
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import jobs_pb2
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

VALIDATORS = [{"kind": "contains", "params": {"value": "ok"}}]


@pytest.fixture
async def suite(eval_urls: tuple[str, str]) -> AsyncIterator[Suite]:
    async with eval_suite(eval_urls) as running:
        yield running


def traces(prefix: str, count: int, start: int = 0) -> list[pb.Span]:
    return [
        span(f"{prefix}{i:04}", "root", start_ms=i, kind="SPAN_KIND_LLM", output=f"ok {i}")
        for i in range(start, start + count)
    ]


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("not reached in time")


async def judgments(suite: Suite) -> list[tuple[str, str, int]]:
    async with suite.eval_db.session() as session:
        rows = await session.execute(
            select(JudgmentRow.trace_id, JudgmentRow.rule_id, JudgmentRow.attempt)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def create_rule(suite: Suite, **body: object) -> api.Rule:
    request = json_format.ParseDict(
        {"name": "r", "validators": VALIDATORS, **body}, api.CreateRuleRequest()
    )
    return (await suite.eval.CreateRule(request, metadata=suite.as_())).rule


async def test_a_sampled_rule_judges_its_share_of_new_traces_once_across_a_restart(
    suite: Suite,
) -> None:
    rule = await create_rule(suite, sampling_rate=0.5)
    assert rule.filter.roots_only
    assert rule.enabled
    first = traces("t", 300)
    await suite.ingest(first[:150])
    await suite.ingest(first[150:])
    # Another user's spans are not the rule's.
    await suite.ingest(traces("x", 50), user=new_user())
    wanted = {s.trace_id for s in first if sampled(rule.id, s.trace_id, 0.5)}
    assert 110 < len(wanted) < 190

    async def judged_some() -> bool:
        return len(await judgments(suite)) >= 40

    await until(judged_some)
    await suite.restart_eval()
    second = traces("t", 300, start=300)
    await suite.ingest(second)
    wanted |= {s.trace_id for s in second if sampled(rule.id, s.trace_id, 0.5)}

    async def all_judged() -> bool:
        return len(await judgments(suite)) >= len(wanted)

    await until(all_judged, 60)
    await asyncio.sleep(1)  # anything judged twice would land by now
    found = await judgments(suite)
    assert sorted(t for t, _, _ in found) == sorted(wanted)  # each once, none unsampled
    assert {r for _, r, _ in found} == {rule.id}
    assert {a for _, _, a in found} == {1}
    shown = (
        await suite.eval.GetRule(api.GetRuleRequest(rule_id=rule.id), metadata=suite.as_())
    ).rule
    assert shown.spans_judged == len(wanted)
    assert shown.spans_seen >= 600
    assert shown.HasField("followed_until")


async def test_a_paused_rule_judges_nothing_until_resumed(suite: Suite) -> None:
    rule = await create_rule(suite)
    await suite.eval.SetRuleEnabled(
        api.SetRuleEnabledRequest(rule_id=rule.id, enabled=False), metadata=suite.as_()
    )
    await suite.ingest(traces("p", 20))
    await asyncio.sleep(1)
    assert await judgments(suite) == []
    await suite.eval.SetRuleEnabled(
        api.SetRuleEnabledRequest(rule_id=rule.id, enabled=True), metadata=suite.as_()
    )

    async def caught_up() -> bool:
        return len(await judgments(suite)) == 20

    await until(caught_up)


async def test_a_job_over_history_reports_progress_and_resumes_after_cancel(suite: Suite) -> None:
    await suite.ingest(traces("h", 400))
    rule = await create_rule(suite, filter={"model": "absent-model"})  # follows nothing
    await suite.eval.DeleteRule(api.DeleteRuleRequest(rule_id=rule.id), metadata=suite.as_())
    rule = await create_rule(suite, sampling_rate=1.0)
    await suite.eval.SetRuleEnabled(
        api.SetRuleEnabledRequest(rule_id=rule.id, enabled=False), metadata=suite.as_()
    )
    window = {
        "start_time_from": (T0 - timedelta(hours=1)).isoformat(),
        "start_time_to": (T0 + timedelta(hours=1)).isoformat(),
    }
    job = (
        await suite.eval.StartRuleJob(
            json_format.ParseDict({"rule_id": rule.id, **window}, api.StartRuleJobRequest()),
            metadata=suite.as_(),
        )
    ).job
    assert job.state == jobs_pb2.JOB_STATE_QUEUED

    async def get() -> api.RuleJob:
        return (
            await suite.eval.GetRuleJob(
                api.GetRuleJobRequest(rule_id=rule.id, job_id=job.id), metadata=suite.as_()
            )
        ).job

    async def started() -> bool:
        return (await get()).spans_read >= 100

    await until(started)
    cancelled = (
        await suite.eval.CancelRuleJob(
            api.CancelRuleJobRequest(rule_id=rule.id, job_id=job.id), metadata=suite.as_()
        )
    ).job
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    await asyncio.sleep(0.5)
    stopped_at = (await get()).spans_read
    assert stopped_at < 400
    await suite.restart_eval()
    resumed = (
        await suite.eval.ResumeRuleJob(
            api.ResumeRuleJobRequest(rule_id=rule.id, job_id=job.id), metadata=suite.as_()
        )
    ).job
    assert resumed.state == jobs_pb2.JOB_STATE_QUEUED

    async def finished() -> bool:
        return (await get()).state == jobs_pb2.JOB_STATE_SUCCEEDED

    await until(finished, 60)
    done = await get()
    # The rule followed new spans for a moment before it was paused: the job skips those.
    assert done.spans_read == 400
    assert done.spans_judged + done.spans_skipped == 400
    assert done.spans_failed == 0
    assert done.HasField("finished_at")
    found = await judgments(suite)
    assert len(found) == 400
    assert len({t for t, _, _ in found}) == 400
    again = await rpc_error(
        suite.eval.ResumeRuleJob(
            api.ResumeRuleJobRequest(rule_id=rule.id, job_id=job.id), metadata=suite.as_()
        )
    )
    assert again.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A second job with rerun judges each span again, once.
    rerun = (
        await suite.eval.StartRuleJob(
            json_format.ParseDict(
                {"rule_id": rule.id, "rerun": True, **window}, api.StartRuleJobRequest()
            ),
            metadata=suite.as_(),
        )
    ).job

    async def rerun_done() -> bool:
        reply = await suite.eval.GetRuleJob(
            api.GetRuleJobRequest(rule_id=rule.id, job_id=rerun.id), metadata=suite.as_()
        )
        return reply.job.state == jobs_pb2.JOB_STATE_SUCCEEDED

    await until(rerun_done, 60)
    attempts = sorted(a for _, _, a in await judgments(suite))
    assert attempts == [1] * 400 + [2] * 400
    listed = await suite.eval.ListRuleJobs(
        api.ListRuleJobsRequest(rule_id=rule.id), metadata=suite.as_()
    )
    assert [j.id for j in listed.jobs] == [rerun.id, job.id]


async def test_rules_are_the_callers_own_and_checked(suite: Suite) -> None:
    rule = await create_rule(suite)
    stranger = new_user()
    for call in (
        suite.eval.GetRule(api.GetRuleRequest(rule_id=rule.id), metadata=suite.as_(stranger)),
        suite.eval.DeleteRule(api.DeleteRuleRequest(rule_id=rule.id), metadata=suite.as_(stranger)),
        suite.eval.StartRuleJob(
            api.StartRuleJobRequest(rule_id=rule.id), metadata=suite.as_(stranger)
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await suite.eval.ListRules(api.ListRulesRequest(), metadata=suite.as_(stranger))
    assert not listed.rules
    for body, field in (
        ({"sampling_rate": 0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"name": ""}, "name"),
        ({"validators": []}, "validators"),
        ({"filter": {"min_groundedness": 2}}, "groundedness"),
    ):
        request = json_format.ParseDict(
            {"name": "r", "validators": VALIDATORS, **body}, api.CreateRuleRequest()
        )
        error = await rpc_error(suite.eval.CreateRule(request, metadata=suite.as_()))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, body
        assert field in str(error.details()), (body, error.details())


async def test_judgments_of_deleted_traces_are_kept_and_flagged(suite: Suite) -> None:
    await suite.ingest(traces("d", 3))
    for i in range(3):
        await suite.evaluate(trace_id=f"d{i:04}", validators=VALIDATORS)
    await suite.tracing.DeleteSpans(
        json_format.ParseDict(
            {"started_before": (T0 + timedelta(milliseconds=1.5)).isoformat()},
            tapi.DeleteSpansRequest(),
        ),
        metadata=suite.as_(),
    )
    from services.eval.evaluator import Evaluator
    from services.eval.judgment_store import JudgmentStore
    from services.eval.tracing import TracingClient

    tracing = TracingClient(suite.tracing_address, INTERNAL_TOKEN)
    try:
        store = JudgmentStore(suite.eval_db)
        evaluator = Evaluator(tracing, store, None, lambda: T0)  # type: ignore[arg-type]
        _, flagged = await Housekeeping(store, tracing, evaluator, 3600).run_once()
    finally:
        await tracing.close()
    assert flagged == 2
    listed = await suite.eval.ListJudgments(api.ListJudgmentsRequest(), metadata=suite.as_())
    assert sorted((j.trace_id, j.trace_deleted) for j in listed.judgments) == [
        ("d0000", True),
        ("d0001", True),
        ("d0002", False),
    ]
    async with suite.eval_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(JudgmentRow)) == 3


async def test_a_rule_that_fails_holds_up_no_other(suite: Suite) -> None:
    broken = await create_rule(suite, name="broken")
    # A filter the tracing service has come to refuse (stored before its checks were added).
    async with suite.eval_db.session(write=True) as session:
        await session.execute(
            update(RuleRow)
            .where(RuleRow.id == broken.id)
            .values(filter='{"roots_only": true, "min_groundedness": 2}')
        )
    healthy = await create_rule(suite, name="healthy")
    await suite.ingest(traces("h", 10))

    async def judged() -> bool:
        return len(await judgments(suite)) == 10

    await until(judged)
    assert {r for _, r, _ in await judgments(suite)} == {healthy.id}
    # A refusal no retry can cure pauses the rule, saying why, instead of retrying forever.
    shown = (
        await suite.eval.GetRule(api.GetRuleRequest(rule_id=broken.id), metadata=suite.as_())
    ).rule
    assert not shown.enabled
    assert "min_groundedness" in shown.error
    resumed = await suite.eval.SetRuleEnabled(
        api.SetRuleEnabledRequest(rule_id=broken.id, enabled=True), metadata=suite.as_()
    )
    assert resumed.rule.enabled
    assert resumed.rule.error == ""
