"""The eval service end to end, as real processes behind the gateway, on both databases: an
app instrumented with the OpenTelemetry SDK sends its traces; they are judged by validators,
offline groundedness and an LLM judge (a local server built from OpenAI's published schema,
answering well, badly, slowly and with 429s); judgments are read back by trace and session;
traces are filtered by the groundedness written onto them; a sampled rule judges half of 1,000
new traces once each across a restart of the eval service."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.eval.rules import sampled
from tests.conftest import PgDatabases
from tests.e2e.conftest import Suite, suite_on
from tests.fakes.openai_chat import MALFORMED, PROSE, FakeOpenAIChat, Reply

pytestmark = pytest.mark.e2e

JUDGE_KEY = "sk-judge-e2e-" + "Q7w" * 12
DOCS = [
    "The Eiffel Tower is in Paris, France. It was completed in 1889.",
    "Paris is the capital of France.",
]
GROUNDED = "The Eiffel Tower is in Paris. It was completed in 1889."
UNGROUNDED = "The Eiffel Tower is in Rome. It was built by the Romans in 300 BC."
VALIDATORS = [
    {"kind": "contains", "params": {"value": "Eiffel"}},
    {"kind": "pii"},
    {"kind": "regex", "name": "year", "params": {"pattern": r"\b1[0-9]{3}\b"}},
]


@pytest.fixture(scope="module")
def judge() -> Iterator[FakeOpenAIChat]:
    fake = FakeOpenAIChat(JUDGE_KEY)
    with fake.serve():
        yield fake


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgDatabases,
    judge: FakeOpenAIChat,
) -> Iterator[Suite]:
    with suite_on(
        request.param,
        tmp_path_factory,
        pg,
        # The fake judge listens on loopback: the operator allows it (and nothing else).
        TUNELAB_EVAL_JUDGE_ALLOW_NETWORKS="127.0.0.1/32",
        TUNELAB_EVAL_JUDGE_TIMEOUT_SECONDS="4",
    ) as running:
        running.remember(JUDGE_KEY)
        yield running


def instrumented_app(suite: Suite, user: str, calls: list[tuple[str, str, str]]) -> None:
    """A RAG app traced with the OpenTelemetry SDK: per call (trace name, session, answer) a
    chain span, its retrieval (OpenInference's flattened documents) and the chat call (GenAI
    conventions), exported as OTLP/HTTP protobuf to the gateway."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=f"{suite.url}/v1/traces",
        headers={"Authorization": f"Bearer {suite.token(user)}"},
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e")
    for name, session, answer in calls:
        with tracer.start_as_current_span(name) as root:
            root.set_attribute("openinference.span.kind", "CHAIN")
            root.set_attribute("session.id", session)
            with tracer.start_as_current_span("retrieve") as retrieve:
                retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
                for i, doc in enumerate(DOCS):
                    retrieve.set_attribute(f"retrieval.documents.{i}.document.content", doc)
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.provider.name", "openai")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("session.id", session)
                chat.set_attribute("gen_ai.usage.input_tokens", 300)
                chat.set_attribute("gen_ai.usage.output_tokens", 40)
                chat.set_attribute(
                    "gen_ai.input.messages",
                    json.dumps([{"role": "user", "content": "Where is the Eiffel Tower?"}]),
                )
                chat.set_attribute(
                    "gen_ai.output.messages",
                    json.dumps([{"role": "assistant", "content": answer}]),
                )
    provider.force_flush()
    provider.shutdown()


def roots(client: httpx.Client) -> dict[str, str]:
    """The user's traces by their root's name."""
    listed = client.get("/v1/traces", params={"roots_only": "true", "page_size": 500}).json()
    return {s["name"]: s["trace_id"] for s in listed["spans"]}


def evaluate(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/evaluations", json=body, timeout=60)


def test_an_instrumented_app_is_judged_and_read_back(suite: Suite, judge: FakeOpenAIChat) -> None:
    user = "eval-e2e"
    instrumented_app(
        suite,
        user,
        [("good", "s-a", GROUNDED), ("bad", "s-a", UNGROUNDED), ("other", "s-b", GROUNDED)],
    )
    client = suite.client(user)
    ids = roots(client)
    assert set(ids) == {"good", "bad", "other"}
    assert client.put("/v1/judge-keys/fake", json={"api_key": JUDGE_KEY}).status_code == 204
    keys = client.get("/v1/judge-keys").json()
    assert keys["judge_keys"][0]["last4"] == JUDGE_KEY[-4:]
    judge_config = {"base_url": judge.base_url, "model": "gpt-4o-mini", "key_name": "fake"}

    judge.reset()
    judge.script(Reply.score(9, "Correct and grounded."))
    answer = evaluate(
        client,
        trace_id=ids["good"],
        validators=VALIDATORS,
        judge=judge_config,
        groundedness={"method": "offline"},
    )
    assert answer.status_code == 200, answer.text
    judgment = answer.json()["judgment"]
    assert judgment["status"] == "complete"
    assert judgment["passed"] is True
    assert judgment["trace_id"] == ids["good"]
    assert judgment["session_id"] == "s-a"
    assert judgment["model"] == "gpt-4o"
    assert judgment["judge"]["raw_score"] == 9
    assert judgment["judge"]["reasoning"] == "Correct and grounded."
    assert judgment["groundedness"]["score"] == 1
    assert [r["name"] for r in judgment["results"]] == [
        "contains",
        "pii",
        "year",
        "judge",
        "groundedness",
    ]
    # What the judge was sent: the key as the bearer, a strict JSON schema, the answer.
    (sent,) = judge.requests
    assert sent.authorization == f"Bearer {JUDGE_KEY}"
    assert sent.response_format == "json_schema"
    assert GROUNDED in json.dumps(sent.json)
    judge.check()
    # The judge's own call is a trace of the user's, linked from the judgment.
    judge_trace = client.get(f"/v1/traces/{judgment['judge']['judge_trace_id']}").json()
    judge_span = judge_trace["roots"][0]["span"]
    assert judge_span["model"].startswith("gpt-4o-mini")
    assert "tunelab-judge" in judge_span["tags"]
    assert int(judge_span["usage"]["input_tokens"]) > 0
    assert JUDGE_KEY not in json.dumps(judge_trace)

    # Each way a judge can fail is a failed judgment that says why, never a pass or a 500.
    for reply, error in (
        (MALFORMED, "unparseable"),
        (PROSE, "unparseable"),
        (Reply.score(11), "out_of_scale"),
        (Reply.score(8).slow(6), "timeout"),
    ):
        judge.reset()
        judge.script(reply, reply, reply, reply)
        failed = evaluate(client, trace_id=ids["other"], judge=judge_config)
        assert failed.status_code == 200, failed.text
        body = failed.json()["judgment"]
        assert body["status"] == "error", (error, body)
        assert body["passed"] is False
        assert body["results"][0]["error"] == error, body
        assert body["score"] == 0
    # A 429 with Retry-After is waited out and retried.
    judge.reset()
    judge.script(Reply.rate_limited(1), Reply.score(6))
    started = time.monotonic()
    limited = evaluate(client, trace_id=ids["other"], judge=judge_config).json()["judgment"]
    assert time.monotonic() - started >= 1
    assert limited["status"] == "complete"
    assert limited["judge"]["attempts"] == 2
    assert limited["judge"]["raw_score"] == 6
    judge.check()

    bad = evaluate(
        client, trace_id=ids["bad"], validators=VALIDATORS, groundedness={"method": "offline"}
    ).json()["judgment"]
    assert bad["passed"] is False
    assert "groundedness" in bad["failed"]
    assert any("Rome" in claim for claim in bad["groundedness"]["unsupported"])

    # Read back by trace and by session.
    by_trace = client.get("/v1/judgments", params={"trace_id": ids["other"]}).json()
    # One configuration: each judgment in error was retried as the next attempt.
    assert sorted(j["attempt"] for j in by_trace["judgments"]) == [1, 2, 3, 4, 5]
    assert {j["trace_id"] for j in by_trace["judgments"]} == {ids["other"]}
    by_session = client.get("/v1/judgments", params={"session_id": "s-a"}).json()
    assert {j["trace_id"] for j in by_session["judgments"]} == {ids["good"], ids["bad"]}
    failed_only = client.get("/v1/judgments", params={"passed": "false"}).json()["judgments"]
    assert ids["good"] not in {j["trace_id"] for j in failed_only}
    summary = client.get("/v1/evaluations/summary", params={"group_by": "validator"}).json()
    rows = {r["group"]: r for r in summary["rows"]}
    assert rows["judge"]["errors"] == "4"
    assert rows["groundedness"]["count"] == "2"

    # Traces filtered by the groundedness written back onto them.
    grounded = client.get("/v1/traces", params={"min_groundedness": 0.9}).json()["spans"]
    assert [s["trace_id"] for s in grounded] == [ids["good"]]
    shaky = client.get("/v1/traces", params={"groundedness_below": 0.5}).json()["spans"]
    assert [s["trace_id"] for s in shaky] == [ids["bad"]]
    assert shaky[0]["evaluation"]["judgment_id"] == bad["id"]

    # The judge's key reached no answer and no log.
    assert JUDGE_KEY not in suite.logs()


def test_hostile_requests_get_clear_errors(suite: Suite) -> None:
    client = suite.client("eval-hostile")
    instrumented_app(suite, "eval-hostile", [("mine", "s", GROUNDED)])
    trace_id = roots(client)["mine"]
    stranger = suite.client("eval-stranger")
    theirs = evaluate(stranger, trace_id=trace_id, validators=VALIDATORS)
    assert theirs.status_code == 404
    assert "not found" in theirs.json()["error"]["message"]
    for body, status, words in (
        ({"validators": [{"kind": "regex", "params": {"pattern": "(x"}}]}, 400, "params.pattern"),
        (
            {"validators": [{"kind": "json_schema", "params": {"schema": {"type": 5}}}]},
            400,
            "schema",
        ),
        ({"judge": {"base_url": "http://169.254.169.254/v1", "model": "m"}}, 400, "link-local"),
        ({"judge": {"base_url": "http://10.1.2.3/v1", "model": "m"}}, 400, "private"),
        ({"validators": []}, 400, "nothing to evaluate"),
    ):
        answer = evaluate(client, trace_id=trace_id, **body)
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["error"]["message"], answer.text
    for raw in ("[]", '"text"', "42", "null"):
        answer = client.post(
            "/v1/evaluations", content=raw, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, (raw, answer.text)
    # A 5 MB output never becomes a judgment of a cut answer: the span is refused at ingest,
    # saying why (the validators themselves bound their work on outputs that large).
    huge = client.post(
        "/v1/traces/spans",
        json={
            "spans": [
                {
                    "trace_id": "huge",
                    "span_id": "s",
                    "name": "chat",
                    "timing": {"start_time": "2026-12-04T10:00:00Z"},
                    "output": "a" * 5_000_000,
                }
            ]
        },
    )
    assert huge.status_code == 200, huge.text
    (refused,) = huge.json()["rejected"]
    assert "larger than" in refused["reason"]
    missing = evaluate(client, trace_id="huge", validators=VALIDATORS)
    assert missing.status_code == 404
    nan = client.get("/v1/judgments", params={"min_score": "NaN"})
    assert nan.status_code == 400
    assert client.get("/v1/judgments/jdg_nope").status_code == 404
    assert client.get("/v1/judgments").json()["judgments"] == []


def until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError("not reached in time")


def test_a_sampled_rule_judges_half_of_1000_new_traces_once_across_a_restart(
    suite: Suite,
) -> None:
    user = "eval-rule"
    client = suite.client(user)
    created = client.post(
        "/v1/eval-rules",
        json={"name": "half", "sampling_rate": 0.5, "validators": VALIDATORS},
    )
    assert created.status_code == 201, created.text
    rule = created.json()["rule"]

    def batch(start: int) -> list[dict[str, Any]]:
        return [
            {
                "trace_id": f"rule-{i:05}",
                "span_id": "root",
                "name": "chat",
                "kind": "llm",
                "model": "gpt-4o",
                "timing": {
                    "start_time": "2026-12-04T10:00:00Z",
                    "end_time": "2026-12-04T10:00:01Z",
                },
                "output": f"The Eiffel Tower, built by 1889 (answer {i}).",
            }
            for i in range(start, start + 250)
        ]

    def judged() -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            page = client.get(
                "/v1/judgments",
                params={"rule_id": rule["id"], "page_size": 500, "page_token": token},
            ).json()
            found.extend(j["trace_id"] for j in page["judgments"])
            if not (token := page.get("next_page_token", "")):
                return found

    for start in (0, 250):
        assert (
            client.post("/v1/traces/spans", json={"spans": batch(start)}).json()["accepted"] == 250
        )
    until(lambda: len(judged()) >= 50, 60)
    suite.restart("eval", "services.eval")
    for start in (500, 750):
        assert (
            client.post("/v1/traces/spans", json={"spans": batch(start)}).json()["accepted"] == 250
        )
    wanted = {f"rule-{i:05}" for i in range(1000) if sampled(rule["id"], f"rule-{i:05}", 0.5)}
    assert 400 <= len(wanted) <= 600
    until(lambda: len(judged()) >= len(wanted), 120)
    time.sleep(2)  # a second judgment of anything would have landed by now
    found = judged()
    assert sorted(found) == sorted(wanted)
    shown = client.get(f"/v1/eval-rules/{rule['id']}").json()["rule"]
    assert shown["spans_judged"] == str(len(wanted))
