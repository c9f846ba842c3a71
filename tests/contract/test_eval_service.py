"""The eval service over real gRPC, reading and annotating traces through a real tracing
service, on both backends: deterministic validators and offline groundedness, idempotence,
ownership, hostile configurations, lists and summaries, judge keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import func, select

from services.eval.models import JudgeKeyRow, JudgmentRow
from tests.conftest import new_user
from tests.contract.conftest import rpc_error
from tests.contract.eval_fixtures import Suite, eval_suite, rag_trace, span
from tests.fakes.openai_chat import FakeOpenAIChat, Reply
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

DOCS = [
    "The Eiffel Tower is in Paris, France. It was completed in 1889.",
    "Paris is the capital of France.",
]
GROUNDED = "The Eiffel Tower is in Paris. It was completed in 1889."
UNGROUNDED = "The Eiffel Tower is in Rome. It was built by the Romans in 300 BC."
JUDGE_KEY = "sk-contract-judge-" + "J" * 32


@pytest.fixture
async def suite(eval_urls: tuple[str, str]) -> AsyncIterator[Suite]:
    async with eval_suite(eval_urls) as running:
        yield running


CHECKS: list[dict[str, Any]] = [
    {"kind": "contains", "params": {"value": "paris", "case_sensitive": False}},
    {"kind": "not_contains", "name": "no_rome", "params": {"value": "Rome"}},
    {"kind": "pii"},
    {"kind": "output_tokens", "params": {"max": 100}},
]


async def test_validators_and_offline_groundedness_judge_the_answer_and_reach_the_trace(
    suite: Suite,
) -> None:
    await suite.ingest(rag_trace("good", GROUNDED, DOCS))
    reply = await suite.evaluate(
        trace_id="good", validators=CHECKS, groundedness={"method": "GROUNDEDNESS_METHOD_OFFLINE"}
    )
    j = reply.judgment
    assert reply.created
    # The root records no output: the LLM span that answered is judged.
    assert (j.trace_id, j.span_id, j.session_id, j.model) == ("good", "llm", "s1", "gpt-4o")
    assert j.status == jpb.JUDGMENT_STATUS_COMPLETE
    assert j.passed
    assert not j.failed
    assert j.score == 1.0
    assert [r.name for r in j.results] == [
        "contains",
        "no_rome",
        "pii",
        "output_tokens",
        "groundedness",
    ]
    assert j.groundedness.score == 1.0
    assert not j.groundedness.unsupported
    # Written back onto the span through the tracing service.
    written = await suite.span_of("good", "llm")
    assert written.evaluation.judgment_id == j.id
    assert written.evaluation.eval_score == 1.0
    assert written.evaluation.eval_passed
    assert written.evaluation.groundedness_score == 1.0

    await suite.ingest(rag_trace("bad", UNGROUNDED, DOCS))
    bad = (
        await suite.evaluate(
            trace_id="bad",
            validators=CHECKS,
            groundedness={"method": "GROUNDEDNESS_METHOD_OFFLINE"},
        )
    ).judgment
    assert not bad.passed
    assert set(bad.failed) == {"contains", "no_rome", "groundedness"}
    assert 0.0 <= bad.score < 1.0
    assert bad.groundedness.score < 0.7
    assert bad.groundedness.unsupported
    assert "Rome" in bad.groundedness.unsupported[0]
    by_name = {r.name: r for r in bad.results}
    assert by_name["pii"].passed
    assert by_name["output_tokens"].passed
    # The weighted mean: 2 of 4 validators pass with score 1, groundedness adds its own score.
    expected = (0 + 0 + 1 + 1 + by_name["groundedness"].score) / 5
    assert bad.score == pytest.approx(expected)

    # Spans filtered by the groundedness the eval service wrote.
    listed = await suite.tracing.ListSpans(
        tapi.ListSpansRequest(filter=tapi.SpanFilter(min_groundedness=0.9)),
        metadata=suite.as_(),
    )
    assert [(s.trace_id, s.span_id) for s in listed.spans] == [("good", "llm")]


async def test_a_span_is_judged_once_per_configuration_unless_asked_again(suite: Suite) -> None:
    await suite.ingest(rag_trace("t", GROUNDED, DOCS))
    first = await suite.evaluate(trace_id="t", validators=CHECKS)
    again = await suite.evaluate(trace_id="t", validators=CHECKS)
    assert not again.created
    assert again.judgment.id == first.judgment.id
    # The same configuration spelled differently (another name, defaults given) is the same.
    respelled = [dict(c) for c in CHECKS]
    respelled[2] = {"kind": "pii", "name": "privacy", "weight": 1.0}
    assert (
        await suite.evaluate(trace_id="t", validators=respelled)
    ).judgment.id == first.judgment.id
    rerun = await suite.evaluate(trace_id="t", validators=CHECKS, rerun=True)
    assert rerun.created
    assert rerun.judgment.attempt == 2
    assert rerun.judgment.id != first.judgment.id
    # Another configuration is another judgment.
    other = await suite.evaluate(trace_id="t", validators=[{"kind": "is_json"}])
    assert other.created
    assert other.judgment.config_key != first.judgment.config_key
    # Concurrent identical requests make one judgment.
    replies = await asyncio.gather(
        *(
            suite.evaluate(
                trace_id="t", validators=[{"kind": "contains", "params": {"value": "x"}}]
            )
            for _ in range(6)
        )
    )
    assert len({r.judgment.id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1


async def test_another_users_trace_is_not_found_like_a_missing_one(suite: Suite) -> None:
    await suite.ingest(rag_trace("mine", GROUNDED, DOCS))
    stranger = new_user()
    theirs = await rpc_error(suite.evaluate(user=stranger, trace_id="mine", validators=CHECKS))
    missing = await rpc_error(suite.evaluate(trace_id="nope", validators=CHECKS))
    assert theirs.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert "trace" in str(theirs.details())
    no_span = await rpc_error(suite.evaluate(trace_id="mine", span_id="zzz", validators=CHECKS))
    assert no_span.code() == grpc.StatusCode.NOT_FOUND
    judged = (await suite.evaluate(trace_id="mine", validators=CHECKS)).judgment
    hidden = await rpc_error(
        suite.eval.GetJudgment(
            api.GetJudgmentRequest(judgment_id=judged.id), metadata=suite.as_(stranger)
        )
    )
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    listed = await suite.eval.ListJudgments(
        api.ListJudgmentsRequest(), metadata=suite.as_(stranger)
    )
    assert not listed.judgments
    async with suite.eval_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(JudgmentRow)) == 1


@pytest.mark.parametrize(
    ("validators", "field"),
    [
        ([{"kind": "regex", "params": {"pattern": "(unclosed"}}], "validators[0].params.pattern"),
        (
            [{"kind": "json_schema", "params": {"schema": {"type": "nope"}}}],
            "validators[0].params.schema",
        ),
        ([{"kind": "no_such_kind"}], "validators[0].kind"),
        (
            [{"kind": "contains", "params": {"value": "a"}, "threshold": 2}],
            "validators[0].threshold",
        ),
        ([{"kind": "contains"}], "validators[0].params.value"),
        ([], "validators"),
    ],
)
async def test_bad_configurations_are_refused_with_the_field_to_fix(
    suite: Suite, validators: list[object], field: str
) -> None:
    await suite.ingest(rag_trace("t", GROUNDED, DOCS))
    error = await rpc_error(suite.evaluate(trace_id="t", validators=validators))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(error.details())
    async with suite.eval_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(JudgmentRow)) == 0


async def test_a_catastrophic_regex_and_a_large_output_fail_a_check_not_the_service(
    suite: Suite,
) -> None:
    big = "a" * 900_000 + "!"
    await suite.ingest([span("big", "s", output=big, kind="SPAN_KIND_LLM")])
    started = time.monotonic()
    reply = await suite.evaluate(
        trace_id="big",
        validators=[
            {
                "kind": "regex",
                "params": {"pattern": "(a+)+$", "full_match": True, "timeout_ms": 50},
            },
            {"kind": "regex", "name": "evil", "params": {"pattern": "(a|aa)+z", "timeout_ms": 50}},
            {"kind": "char_length", "params": {"max": 1000}},
            {"kind": "pii"},
        ],
    )
    assert time.monotonic() - started < 20
    by_name = {r.name: r for r in reply.judgment.results}
    assert not by_name["evil"].passed
    assert "did not finish within 50 ms" in by_name["evil"].reason
    assert not by_name["char_length"].passed
    assert by_name["pii"].passed


async def test_a_judge_url_inside_our_network_is_refused_before_any_call(suite: Suite) -> None:
    await suite.ingest(rag_trace("t", GROUNDED, DOCS))
    for url in (
        "http://169.254.169.254/latest",
        "http://127.0.0.1:9/v1",
        "http://10.0.0.5/v1",
        "http://[::1]/v1",
        "file:///etc/passwd",
    ):
        error = await rpc_error(suite.evaluate(trace_id="t", judge={"base_url": url, "model": "m"}))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "judge.base_url" in str(error.details())
    no_judge = await rpc_error(suite.evaluate(trace_id="t", judge={"model": "m"}))
    assert no_judge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no judge is configured" in str(no_judge.details())


async def test_groundedness_without_context_is_an_error_never_a_pass(suite: Suite) -> None:
    await suite.ingest([span("plain", "s", kind="SPAN_KIND_LLM", output="Paris is lovely.")])
    j = (
        await suite.evaluate(
            trace_id="plain", groundedness={"method": "GROUNDEDNESS_METHOD_OFFLINE"}
        )
    ).judgment
    assert j.status == jpb.JUDGMENT_STATUS_ERROR
    assert not j.passed
    assert j.failed == ["groundedness"]
    assert j.score == 0.0
    assert j.results[0].error == "no_context"
    # An error is retried when asked again (a new attempt), not returned as settled.
    again = await suite.evaluate(
        trace_id="plain", groundedness={"method": "GROUNDEDNESS_METHOD_OFFLINE"}
    )
    assert again.created
    assert again.judgment.attempt == 2


async def test_lists_and_summaries(suite: Suite) -> None:
    for i in range(12):
        answer = GROUNDED if i % 3 else UNGROUNDED
        await suite.ingest(
            rag_trace(f"t{i:02}", answer, DOCS, session=f"s{i % 2}", model="a" if i < 6 else "b")
        )
        await suite.evaluate(trace_id=f"t{i:02}", validators=CHECKS)
    listed: list[jpb.Judgment] = []
    token = ""
    while True:
        page = await suite.eval.ListJudgments(
            api.ListJudgmentsRequest(page_size=5, page_token=token), metadata=suite.as_()
        )
        listed.extend(page.judgments)
        if not (token := page.next_page_token):
            break
    assert len(listed) == 12
    assert len({j.id for j in listed}) == 12

    async def ids(**where: object) -> set[str]:
        reply = await suite.eval.ListJudgments(
            api.ListJudgmentsRequest(filter=json_format.ParseDict(where, api.JudgmentFilter())),
            metadata=suite.as_(),
        )
        return {j.trace_id for j in reply.judgments}

    assert await ids(trace_id="t03") == {"t03"}
    assert await ids(session_id="s1") == {f"t{i:02}" for i in range(12) if i % 2}
    failing = {f"t{i:02}" for i in range(12) if i % 3 == 0}
    assert await ids(passed=False) == failing
    assert await ids(passed=True, model="b") == {f"t{i:02}" for i in range(6, 12) if i % 3}
    assert await ids(max_score=0.99) == failing
    assert await ids(validator="no_rome") == {f"t{i:02}" for i in range(12)}
    assert await ids(validator="absent") == set()
    bad = await rpc_error(
        suite.eval.ListJudgments(
            api.ListJudgmentsRequest(filter=api.JudgmentFilter(min_score=float("nan"))),
            metadata=suite.as_(),
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT

    overall = await suite.eval.GetSummary(api.GetSummaryRequest(), metadata=suite.as_())
    (row,) = overall.rows
    assert (row.count, row.passed) == (12, 8)
    assert row.pass_rate == pytest.approx(8 / 12)
    assert row.score.p50 == 1.0
    assert row.score.p90 == 1.0
    assert 0 < row.mean_score < 1
    by_validator = await suite.eval.GetSummary(
        api.GetSummaryRequest(group_by=api.SUMMARY_GROUP_VALIDATOR), metadata=suite.as_()
    )
    rates = {r.group: (r.count, r.passed) for r in by_validator.rows}
    assert rates == {
        "contains": (12, 8),
        "no_rome": (12, 8),
        "pii": (12, 12),
        "output_tokens": (12, 12),
    }
    by_model = await suite.eval.GetSummary(
        api.GetSummaryRequest(
            group_by=api.SUMMARY_GROUP_MODEL, filter=api.JudgmentFilter(session_id="s0")
        ),
        metadata=suite.as_(),
    )
    assert {r.group: r.count for r in by_model.rows} == {"a": 3, "b": 3}
    by_day = await suite.eval.GetSummary(
        api.GetSummaryRequest(group_by=api.SUMMARY_GROUP_DAY), metadata=suite.as_()
    )
    assert len(by_day.rows) == 1
    assert by_day.rows[0].group.endswith("T00:00:00Z")


async def test_judge_keys_are_stored_encrypted_and_never_shown(suite: Suite) -> None:
    key = "sk-judge-" + "K" * 40
    await suite.eval.SetJudgeKey(
        api.SetJudgeKeyRequest(name="openai", api_key=key), metadata=suite.as_()
    )
    listed = await suite.eval.ListJudgeKeys(api.ListJudgeKeysRequest(), metadata=suite.as_())
    assert [(k.name, k.last4) for k in listed.judge_keys] == [("openai", "KKKK")]
    assert key not in str(listed)
    others = await suite.eval.ListJudgeKeys(
        api.ListJudgeKeysRequest(), metadata=suite.as_(new_user())
    )
    assert not others.judge_keys
    async with suite.eval_db.session() as session:
        rows = (await session.execute(select(func.count()).select_from(JudgmentRow))).scalar()
        assert rows == 0
        raw = await session.execute(select(JudgeKeyRow.ciphertext))
        assert all(key not in c for (c,) in raw)
    bad = await rpc_error(
        suite.eval.SetJudgeKey(
            api.SetJudgeKeyRequest(name="Bad Name", api_key=key), metadata=suite.as_()
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert key not in str(bad.details())
    await suite.eval.DeleteJudgeKey(api.DeleteJudgeKeyRequest(name="openai"), metadata=suite.as_())
    gone = await rpc_error(
        suite.eval.DeleteJudgeKey(api.DeleteJudgeKeyRequest(name="openai"), metadata=suite.as_())
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_validator_kinds_are_listed(suite: Suite) -> None:
    reply = await suite.eval.ListValidatorKinds(
        api.ListValidatorKindsRequest(), metadata=suite.as_()
    )
    kinds = {k.kind: k for k in reply.kinds}
    assert "regex" in kinds
    assert "pattern" in kinds["regex"].params
    assert kinds["levenshtein"].default_threshold == 0.75


@pytest.fixture
def fake_judge() -> Iterator[FakeOpenAIChat]:
    fake = FakeOpenAIChat(JUDGE_KEY)
    with fake.serve():
        yield fake


@pytest.fixture
async def judged(eval_urls: tuple[str, str]) -> AsyncIterator[Suite]:
    """A suite whose operator allows the loopback address the fake judge listens on."""
    async with eval_suite(eval_urls, judge_allow_networks="127.0.0.1/32") as running:
        yield running


async def test_the_judge_grades_and_checks_claims_with_the_users_stored_key(
    judged: Suite, fake_judge: FakeOpenAIChat, caplog: pytest.LogCaptureFixture
) -> None:
    await judged.ingest(rag_trace("t", UNGROUNDED, DOCS))
    await judged.eval.SetJudgeKey(
        api.SetJudgeKeyRequest(name="fake", api_key=JUDGE_KEY), metadata=judged.as_()
    )
    judge = {"base_url": fake_judge.base_url, "model": "judge-1", "key_name": "fake"}
    fake_judge.script(
        Reply.score(3, "Wrong city."),
        Reply.claims(("The tower is in Rome.", False, None), ("It was built in 300 BC.", False, 1)),
    )
    j = (
        await judged.evaluate(
            trace_id="t", judge=judge, groundedness={"method": "GROUNDEDNESS_METHOD_JUDGE"}
        )
    ).judgment
    fake_judge.check()
    assert j.status == jpb.JUDGMENT_STATUS_COMPLETE
    assert j.judge.raw_score == 3
    assert j.judge.reasoning == "Wrong city."
    assert j.groundedness.method == jpb.GROUNDEDNESS_METHOD_JUDGE
    assert j.groundedness.score == 0.0
    assert list(j.groundedness.unsupported) == ["The tower is in Rome.", "It was built in 300 BC."]
    assert set(j.failed) == {"judge", "groundedness"}
    by_name = {r.name: r for r in j.results}
    assert by_name["judge"].score == pytest.approx(2 / 9)
    assert all(r.authorization == f"Bearer {JUDGE_KEY}" for r in fake_judge.requests)
    # The judge's call is a trace of the user's own.
    judge_trace = await judged.tracing.GetTrace(
        tapi.GetTraceRequest(trace_id=j.judge.judge_trace_id), metadata=judged.as_()
    )
    assert judge_trace.roots[0].span.model.startswith("judge-1")
    assert JUDGE_KEY not in str(j)
    assert JUDGE_KEY not in str(judge_trace)
    assert JUDGE_KEY not in caplog.text

    # A key name the user has not stored is a failed judgment that says so; nothing is sent.
    fake_judge.reset()
    missing = (await judged.evaluate(trace_id="t", judge={**judge, "key_name": "absent"})).judgment
    assert missing.status == jpb.JUDGMENT_STATUS_ERROR
    assert missing.results[0].error == "no_key"
    assert not fake_judge.requests


async def test_a_span_with_no_output_fails_the_text_checks_instead_of_passing_them(
    suite: Suite,
) -> None:
    await suite.ingest([span("silent", "s", kind="SPAN_KIND_LLM", usage={"output_tokens": 0})])
    j = (
        await suite.evaluate(
            trace_id="silent",
            validators=[
                {"kind": "not_contains", "params": {"value": "Rome"}},
                {"kind": "pii"},
                {"kind": "output_tokens", "params": {"max": 10}},
            ],
        )
    ).judgment
    by_name = {r.name: r for r in j.results}
    assert by_name["not_contains"].error == "no_output"
    assert by_name["pii"].error == "no_output"
    assert by_name["output_tokens"].passed  # a bound on the span's fields needs no output
    assert j.status == jpb.JUDGMENT_STATUS_ERROR
    assert not j.passed


async def test_a_summary_by_validator_of_the_judgments_that_ran_one(suite: Suite) -> None:
    # The validator filter is an EXISTS over the checks, correlated to the judgment only: the
    # summary by validator reads the checks too, and once took both tables into the EXISTS
    # (no FROM left: INTERNAL).
    await suite.ingest(rag_trace("both", GROUNDED, DOCS))
    await suite.ingest(rag_trace("one", UNGROUNDED, DOCS))
    await suite.evaluate(trace_id="both", validators=CHECKS[:3])
    await suite.evaluate(trace_id="one", validators=CHECKS[2:3])
    reply = await suite.eval.GetSummary(
        api.GetSummaryRequest(
            group_by=api.SUMMARY_GROUP_VALIDATOR, filter=api.JudgmentFilter(validator="no_rome")
        ),
        metadata=suite.as_(),
    )
    # Every check of the judgments that ran no_rome: those of "both", not the pii of "one".
    assert {r.group: (r.count, r.passed) for r in reply.rows} == {
        "contains": (1, 1),
        "no_rome": (1, 1),
        "pii": (1, 1),
    }


async def test_a_validator_name_with_a_nul_is_refused_before_a_rule_is_made(suite: Suite) -> None:
    # PostgreSQL stores no NUL in text: such a name once made a rule that could store none of
    # its judgments, retried forever, while SQLite stored them.
    await suite.ingest(rag_trace("t", GROUNDED, DOCS))
    named = [{"kind": "pii", "name": "a\x00b"}]
    error = await rpc_error(suite.evaluate(trace_id="t", validators=named))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validators[0].name" in str(error.details())
    request = json_format.ParseDict({"name": "r", "validators": named}, api.CreateRuleRequest())
    error = await rpc_error(suite.eval.CreateRule(request, metadata=suite.as_()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validators[0].name" in str(error.details())
