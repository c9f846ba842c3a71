"""Curation over gRPC: judged spans become SFT and DPO datasets in a real datasets service, with
the provenance of every row, on both databases. The tracing, eval and datasets services run in
process over real ports."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format
from sqlalchemy import func, select

from services.common.identity import USER_KEY
from services.eval.curation_store import CurationStore
from services.eval.models import ProvenanceRow
from tests.conftest import new_user
from tests.contract.conftest import Datasets, rpc_error
from tests.contract.eval_fixtures import Suite, eval_suite, span
from tests.e2e.conftest import free_port
from tunelab.datasets.v1 import datasets_pb2
from tunelab.datasets.v1 import datasets_service_pb2 as dapi
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import jobs_pb2
from tunelab.tracing.v1 import spans_pb2 as pb

# Curation touches no bytes itself: the datasets service's storage is tested on both backends
# in its own tests.
pytestmark = pytest.mark.parametrize("storage", ["local"])

SYSTEM = "You are a travel assistant."
PARIS = [{"kind": "contains", "name": "paris", "params": {"value": "Paris"}}]


@pytest.fixture
async def suite(eval_urls: tuple[str, str], datasets: Datasets) -> AsyncIterator[Suite]:
    async with eval_suite(eval_urls, datasets_address=datasets.address) as running:
        yield running


def llm(
    trace: str,
    question: str,
    answer: str,
    *,
    session: str = "",
    start_ms: float = 0,
    system: str = SYSTEM,
    **fields: Any,
) -> pb.Span:
    extra: dict[str, Any] = {"session": {"session_id": session}} if session else {}
    return span(
        trace,
        "llm",
        start_ms=start_ms,
        kind="SPAN_KIND_LLM",
        model="gpt-4o",
        input=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        output=[{"role": "assistant", "content": answer}],
        **extra,
        **fields,
    )


async def judge(suite: Suite, trace: str, validators: list[dict[str, Any]] = PARIS) -> float:
    reply = await suite.evaluate(trace_id=trace, span_id="llm", validators=validators)
    return reply.judgment.score


async def curate(suite: Suite, user: str | None = None, **body: Any) -> cpb.Curation:
    request = json_format.ParseDict(body, cpb.CreateCurationRequest())
    reply = await suite.eval.CreateCuration(request, metadata=suite.as_(user))
    return reply.curation


async def finished(suite: Suite, curation_id: str, seconds: float = 60) -> cpb.Curation:
    deadline = time.monotonic() + seconds
    while True:
        reply = await suite.eval.GetCuration(
            cpb.GetCurationRequest(curation_id=curation_id), metadata=suite.as_()
        )
        if reply.curation.state not in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING):
            return reply.curation
        assert time.monotonic() < deadline, reply.curation
        await asyncio.sleep(0.1)


async def rows_of(datasets: Datasets, dataset_id: str, user: str) -> list[dict[str, Any]]:
    """The dataset's rows, read from the datasets service's store (the blob with its sha256)."""
    wanted = (await dataset(datasets, dataset_id, user)).sha256
    blobs = await datasets.blobs()
    for blob in await datasets.stored():
        data = b"".join([chunk async for chunk in blobs.read(blob.key)])
        if hashlib.sha256(data).hexdigest() == wanted:
            return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    raise AssertionError(f"no stored blob for {dataset_id}")


async def dataset(datasets: Datasets, dataset_id: str, user: str) -> datasets_pb2.Dataset:
    reply = await datasets.stub.GetDataset(
        dapi.GetDatasetRequest(dataset_id=dataset_id), metadata=((USER_KEY, user.encode()),)
    )
    return reply.dataset


async def provenance(
    suite: Suite, dataset_id: str, line: int = 0, user: str | None = None
) -> cpb.GetDatasetProvenanceResponse:
    return await suite.eval.GetDatasetProvenance(
        cpb.GetDatasetProvenanceRequest(dataset_id=dataset_id, line=line),
        metadata=suite.as_(user),
    )


async def test_sft_from_the_answers_that_passed_with_provenance(
    suite: Suite, datasets: Datasets
) -> None:
    await suite.ingest(
        [
            llm("t-good-1", "Capital of France?", "It is Paris.", start_ms=1),
            llm("t-bad", "Capital of France?", "It is Lyon.", start_ms=2),
            llm("t-good-2", "Where is the Louvre?", "In Paris.", start_ms=3),
            llm("t-unjudged", "Anything?", "Paris again.", start_ms=4),
        ]
    )
    for trace in ("t-good-1", "t-bad", "t-good-2"):
        await judge(suite, trace)
    made = await curate(suite, format="CURATION_FORMAT_SFT", conditions={"min_score": 1})
    assert made.state == jobs_pb2.JOB_STATE_QUEUED
    assert made.filter.kind == pb.SPAN_KIND_LLM  # the default
    done = await finished(suite, made.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
    progress = done.progress
    assert (progress.spans_read, progress.spans_matched, progress.unjudged) == (4, 2, 1)
    assert progress.rows == 2
    assert not done.eval_dataset_id
    stored = await dataset(datasets, done.dataset_id, suite.user)
    assert stored.format == datasets_pb2.DATASET_FORMAT_SFT_CHAT
    assert stored.row_count == 2
    assert stored.name == done.name
    rows = await rows_of(datasets, done.dataset_id, suite.user)
    answers = sorted(row["messages"][-1]["content"] for row in rows)
    assert answers == ["In Paris.", "It is Paris."]
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == SYSTEM
    # Every row leads back to its span, and one row alone can be asked for.
    found = await provenance(suite, done.dataset_id)
    assert found.curation.id == done.id
    assert found.curation.conditions.min_score == 1
    assert [r.line for r in found.rows] == [1, 2]
    for row, origin in zip(rows, found.rows, strict=True):
        span_ = await suite.span_of(origin.trace_id, origin.span_id)
        output: Any = json_format.MessageToDict(span_.output)
        assert output[0]["content"] == row["messages"][-1]["content"]
        assert origin.score == 1
    second = await provenance(suite, done.dataset_id, line=2)
    assert [(r.line, r.trace_id) for r in second.rows] == [(2, found.rows[1].trace_id)]
    too_far = await rpc_error(provenance(suite, done.dataset_id, line=2**31))
    assert too_far.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A cancel that comes after the end changes nothing of what was made.
    late = await suite.eval.CancelCuration(
        cpb.CancelCurationRequest(curation_id=done.id), metadata=suite.as_()
    )
    assert late.curation.state == jobs_pb2.JOB_STATE_SUCCEEDED
    # ... nor does one that read the job running just before it succeeded (the race).
    store = CurationStore(suite.eval_db)
    assert not await store.finish(done.id, jobs_pb2.JOB_STATE_CANCELLED, datetime.now(UTC))
    assert len((await provenance(suite, done.dataset_id)).rows) == 2


async def test_dpo_pairs_answers_to_one_input_by_their_scores(
    suite: Suite, datasets: Datasets
) -> None:
    two = [
        {"kind": "contains", "name": "paris", "params": {"value": "Paris"}},
        {"kind": "contains", "name": "france", "params": {"value": "France"}},
    ]
    await suite.ingest(
        [
            llm("q1-best", "Capital of France?", "Paris, in France.", start_ms=1),
            llm("q1-mid", "Capital  of France? ", "Paris.", start_ms=2),  # same input, spaced
            llm("q1-worst", "Capital of France?", "Lyon.", start_ms=3),
            llm("q2-a", "Where is the Louvre?", "In Paris.", start_ms=4),
            llm("q2-b", "Where is the Louvre?", "In Paris, I think.", start_ms=5),
            llm("q3-only", "Tallest tower?", "Paris has the Eiffel Tower, France.", start_ms=6),
        ]
    )
    scores = {t: await judge(suite, t, two) for t in ("q1-best", "q1-mid", "q1-worst")}
    assert scores == {"q1-best": 1, "q1-mid": 0.5, "q1-worst": 0}
    for trace in ("q2-a", "q2-b", "q3-only"):
        await judge(suite, trace, two)
    made = await curate(
        suite,
        format="CURATION_FORMAT_DPO",
        conditions={"min_score": 0.5},
        options={"margin": 0.5},
    )
    done = await finished(suite, made.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
    # q1: best against worst; q2: both 0.5, no margin; q3: nothing to pair with.
    assert done.progress.rows == 1
    assert done.progress.unpaired == 2
    stored = await dataset(datasets, done.dataset_id, suite.user)
    assert stored.format == datasets_pb2.DATASET_FORMAT_DPO_PREFERENCE
    [row] = await rows_of(datasets, done.dataset_id, suite.user)
    assert row["prompt"][-1] == {"role": "user", "content": "Capital of France?"}
    assert row["chosen"] == [{"role": "assistant", "content": "Paris, in France."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Lyon."}]
    [origin] = (await provenance(suite, done.dataset_id)).rows
    assert (origin.trace_id, origin.rejected_trace_id) == ("q1-best", "q1-worst")
    assert (origin.score, origin.rejected_score) == (1, 0)


async def test_conditions_on_named_checks_groundedness_and_a_rule(suite: Suite) -> None:
    await suite.ingest(
        [
            llm("c-both", "Q?", "Paris is big.", start_ms=1),
            llm("c-one", "Q?", "Paris.", start_ms=2),
            llm("c-grounded", "Q?", "Rome.", start_ms=3, evaluation={"groundedness_score": 0.9}),
        ]
    )
    checks = [
        {"kind": "contains", "name": "paris", "params": {"value": "Paris"}},
        {"kind": "contains", "name": "big", "params": {"value": "big"}},
    ]
    for trace in ("c-both", "c-one"):
        await judge(suite, trace, checks)

    async def traces(**conditions: Any) -> set[str]:
        made = await curate(
            suite, format="CURATION_FORMAT_SFT", conditions=conditions, dry_run=True
        )
        done = await finished(suite, made.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
        samples = [json_format.MessageToDict(s) for s in done.sample]
        return {row["messages"][-1]["content"] for row in samples}

    assert await traces(passed_checks=["paris"]) == {"Paris is big.", "Paris."}
    assert await traces(passed_checks=["paris", "big"]) == {"Paris is big."}
    assert await traces(passed=True) == {"Paris is big."}
    # The span's own groundedness counts where no judgment scored it.
    assert await traces(min_groundedness=0.8) == {"Rome."}
    assert await traces() == {"Paris is big.", "Paris.", "Rome."}
    # A rule's judgments only: this rule judged nothing yet.
    rule = await suite.eval.CreateRule(
        json_format.ParseDict(
            {"name": "r", "validators": PARIS, "filter": {"trace_id": "none"}},
            api.CreateRuleRequest(),
        ),
        metadata=suite.as_(),
    )
    assert await traces(min_score=0, rule_id=rule.rule.id) == set()


async def test_options_dedupe_split_session_cap_flags_and_dry_run(
    suite: Suite, datasets: Datasets
) -> None:
    spans = []
    for i in range(40):
        spans.append(llm(f"o{i:02}", f"Question {i}?", f"Paris {i}.", session=f"s{i % 4}"))
    spans.append(llm("o-dup", "Question  0?", "Paris again.", session="s9", start_ms=1))
    spans.append(llm("o-err", "Question 99?", "Paris.", status="SPAN_STATUS_ERROR", start_ms=2))
    spans.append(llm("o-warn", "Question 98?", "Paris.", flags={"warnings": ["slow"]}))
    await suite.ingest(spans)
    for s in spans:
        await judge(suite, s.trace_id)
    dry = await curate(
        suite,
        format="CURATION_FORMAT_SFT",
        conditions={"min_score": 1},
        options={"dedupe": True, "eval_fraction": 0.25, "sample_size": 3},
        dry_run=True,
    )
    dry = await finished(suite, dry.id)
    assert dry.state == jobs_pb2.JOB_STATE_SUCCEEDED, dry.error
    assert not dry.dataset_id
    assert len(dry.sample) == 3
    assert dry.progress.flagged == 2
    assert dry.progress.duplicates == 1
    assert dry.progress.rows + dry.progress.eval_rows == 40
    assert 0 < dry.progress.eval_rows < 20
    assert await datasets.stored() == []  # a dry run stores nothing
    made = await curate(
        suite,
        format="CURATION_FORMAT_SFT",
        name="travel.jsonl",
        conditions={"min_score": 1},
        options={"dedupe": True, "eval_fraction": 0.25, "keep_flagged": True},
    )
    done = await finished(suite, made.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.progress.flagged == 0
    assert done.progress.rows + done.progress.eval_rows == 42
    train = await rows_of(datasets, done.dataset_id, suite.user)
    held = await rows_of(datasets, done.eval_dataset_id, suite.user)
    assert (await dataset(datasets, done.eval_dataset_id, suite.user)).name == "travel-eval.jsonl"
    assert len(train) == done.progress.rows
    assert len(held) == done.progress.eval_rows

    def question(row: dict[str, Any]) -> str:
        return " ".join(row["messages"][1]["content"].split())

    assert not {question(r) for r in train} & {question(r) for r in held}
    held_prov = await provenance(suite, done.eval_dataset_id)
    assert len(held_prov.rows) == len(held)
    # At most 2 rows per session: 4 sessions of 10, and the sessions of one.
    capped = await curate(
        suite,
        format="CURATION_FORMAT_SFT",
        conditions={"min_score": 1},
        options={"max_per_session": 2},
        dry_run=True,
    )
    capped = await finished(suite, capped.id)
    assert capped.progress.rows == 4 * 2 + 1
    assert capped.progress.over_session_cap == 32


async def test_scrub_masks_personal_data_and_no_planted_secret_reaches_a_dataset(
    suite: Suite, datasets: Datasets
) -> None:
    secret = "sk-proj-" + "A1b2C3d4E5f6G7h8" * 3
    await suite.ingest(
        [
            llm(
                "pii",
                f"Mail jane.doe@example.com or call +1 415 555 0100; my key is {secret}",
                "Done, Jane: card 4111 1111 1111 1111 is on file. Paris.",
                metadata={"api_key": secret},
            )
        ]
    )
    await judge(suite, "pii")
    made = await curate(suite, format="CURATION_FORMAT_SFT", options={"scrub": True})
    done = await finished(suite, made.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
    [row] = await rows_of(datasets, done.dataset_id, suite.user)
    text = orjson.dumps(row).decode()
    for planted in ("jane.doe@example.com", "555 0100", "4111 1111 1111 1111", secret):
        assert planted not in text
    assert "[EMAIL]" in text
    assert "[PHONE]" in text
    assert "[CARD]" in text
    assert done.progress.masked["email"] == 1
    assert done.progress.masked["card"] == 1
    # Without the scrub the personal data stays, but the credential never arrived.
    plain = await finished(suite, (await curate(suite, format="CURATION_FORMAT_SFT")).id)
    [raw] = await rows_of(datasets, plain.dataset_id, suite.user)
    assert "jane.doe@example.com" in orjson.dumps(raw).decode()
    assert secret not in orjson.dumps(raw).decode()


async def test_only_the_callers_spans_and_curations(suite: Suite, datasets: Datasets) -> None:
    mallory = new_user()
    await suite.ingest([llm("mine", "Q?", "Paris.")])
    await suite.ingest([llm("theirs", "Secret question?", "Paris secret.")], user=mallory)
    await judge(suite, "mine")
    await suite.evaluate(user=mallory, trace_id="theirs", span_id="llm", validators=PARIS)
    # Naming another user's trace in the filter finds nothing: the filter is the caller's.
    stolen = await curate(suite, mallory, format="CURATION_FORMAT_SFT", filter={"trace_id": "mine"})
    reply = await suite.eval.GetCuration(
        cpb.GetCurationRequest(curation_id=stolen.id), metadata=suite.as_(mallory)
    )
    while reply.curation.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING):
        await asyncio.sleep(0.1)
        reply = await suite.eval.GetCuration(
            cpb.GetCurationRequest(curation_id=stolen.id), metadata=suite.as_(mallory)
        )
    assert reply.curation.state == jobs_pb2.JOB_STATE_FAILED
    assert "no row to write: 0 spans read" in reply.curation.error
    mine = await finished(suite, (await curate(suite, format="CURATION_FORMAT_SFT")).id)
    assert mine.progress.spans_read == 1
    for call in (
        suite.eval.GetCuration(
            cpb.GetCurationRequest(curation_id=mine.id), metadata=suite.as_(mallory)
        ),
        suite.eval.CancelCuration(
            cpb.CancelCurationRequest(curation_id=mine.id), metadata=suite.as_(mallory)
        ),
        provenance(suite, mine.dataset_id, user=mallory),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await suite.eval.ListCurations(cpb.ListCurationsRequest(), metadata=suite.as_())
    assert [c.id for c in listed.curations] == [mine.id]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "format"),
        ({"format": "CURATION_FORMAT_SFT", "filter": {"kind": "SPAN_KIND_TOOL"}}, "filter.kind"),
        ({"format": "CURATION_FORMAT_SFT", "conditions": {"min_score": 1.5}}, "min_score"),
        ({"format": "CURATION_FORMAT_SFT", "conditions": {"min_score": "NaN"}}, "min_score"),
        ({"format": "CURATION_FORMAT_SFT", "conditions": {"passed_checks": [""]}}, "checks"),
        ({"format": "CURATION_FORMAT_SFT", "options": {"eval_fraction": 0.9}}, "eval_fraction"),
        ({"format": "CURATION_FORMAT_DPO", "options": {"margin": 0}}, "margin"),
        ({"format": "CURATION_FORMAT_SFT", "options": {"max_per_session": -1}}, "session"),
        ({"format": "CURATION_FORMAT_SFT", "options": {"sample_size": 51}}, "sample_size"),
        ({"format": "CURATION_FORMAT_SFT", "name": "../etc/passwd"}, "name"),
        ({"format": "CURATION_FORMAT_SFT", "filter": {"min_groundedness": 2}}, "filter"),
    ],
)
async def test_a_request_that_cannot_run_is_refused_naming_the_field(
    suite: Suite, body: dict[str, Any], field: str
) -> None:
    error = await rpc_error(curate(suite, **body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details = error.details() or ""
    assert field in details or field in str(error.trailing_metadata()), details
    listed = await suite.eval.ListCurations(cpb.ListCurationsRequest(), metadata=suite.as_())
    assert not listed.curations


async def test_an_unknown_rule_is_not_found(suite: Suite) -> None:
    error = await rpc_error(
        curate(suite, format="CURATION_FORMAT_SFT", conditions={"rule_id": "rule_nope"})
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def test_a_job_waits_out_the_datasets_service_resumes_after_a_restart_and_cancels(
    eval_urls: tuple[str, str], datasets: Datasets
) -> None:
    away = f"127.0.0.1:{free_port()}"
    async with eval_suite(eval_urls, datasets_address=away) as suite:
        await suite.ingest([llm(f"r{i}", f"Q{i}?", "Paris.") for i in range(3)])
        made = await curate(suite, format="CURATION_FORMAT_SFT")
        cancelled = await curate(suite, format="CURATION_FORMAT_SFT")

        async def collected() -> bool:
            reply = await suite.eval.GetCuration(
                cpb.GetCurationRequest(curation_id=made.id), metadata=suite.as_()
            )
            return reply.curation.progress.spans_read == 3

        await wait_for(collected)  # then the write waits: the datasets service is away
        reply = await suite.eval.CancelCuration(
            cpb.CancelCurationRequest(curation_id=cancelled.id), metadata=suite.as_()
        )
        assert reply.curation.state == jobs_pb2.JOB_STATE_CANCELLED
        assert reply.curation.finished_at.seconds
        # The eval service restarts, now with the datasets service where it is.
        suite.overrides["datasets_address"] = datasets.address
        await suite.restart_eval()
        done = await finished(suite, made.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
        assert done.progress.spans_read == 3
        assert done.progress.rows == 3
        again = await suite.eval.GetCuration(
            cpb.GetCurationRequest(curation_id=cancelled.id), metadata=suite.as_()
        )
        assert again.curation.state == jobs_pb2.JOB_STATE_CANCELLED
        assert not again.curation.dataset_id
        listed = await datasets.stub.ListDatasets(
            dapi.ListDatasetsRequest(), metadata=((USER_KEY, suite.user.encode()),)
        )
        assert [d.id for d in listed.datasets] == [done.dataset_id]


async def test_rows_the_datasets_service_cannot_train_on_fail_the_job_and_leave_nothing(
    suite: Suite, datasets: Datasets
) -> None:
    # The datasets service here takes rows of at most 4,096 bytes.
    await suite.ingest([llm("long", "Tell me everything.", "Paris " * 1000)])
    done = await finished(suite, (await curate(suite, format="CURATION_FORMAT_SFT")).id)
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert "cannot train on the rows: line 1 is longer than 4096 bytes" in done.error
    assert not done.dataset_id
    listed = await datasets.stub.ListDatasets(
        dapi.ListDatasetsRequest(), metadata=((USER_KEY, suite.user.encode()),)
    )
    assert not listed.datasets
    assert await provenance_rows(suite, done.id) == 0


async def provenance_rows(suite: Suite, curation_id: str) -> int:
    async with suite.eval_db.session() as session:
        found = await session.scalar(
            select(func.count())
            .select_from(ProvenanceRow)
            .where(ProvenanceRow.curation_id == curation_id)
        )
    return int(found or 0)
