"""Traces through the gateway, with real processes, on both databases: JSON ingest, filtered
lists, the span tree, analytics, and exports read back with standard parsers."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from tests.e2e.conftest import Suite

pytestmark = pytest.mark.e2e

KEY = "sk-proj-" + "S3cr3tK3y" * 5


def chat_span(trace: str, span_id: str, parent: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": "chat",
        "kind": "llm",
        "model": "gpt-4o",
        "provider": "openai",
        "timing": {
            "start_time": "2026-11-28T10:00:00Z",
            "end_time": "2026-11-28T10:00:01.500Z",
            "time_to_first_token_ms": 300,
        },
        "usage": {"input_tokens": 1200, "output_tokens": 240},
        "request": {"headers": {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}},
        "input": {"messages": [{"role": "user", "content": f"use {KEY} please"}]},
        "output": {"text": "sure"},
        **extra,
    }


@pytest.mark.containers
def test_ingest_list_tree_analytics_export(suite: Suite) -> None:
    alice = suite.client("alice")
    spans = [
        {**chat_span("e2e-t1", "root"), "kind": "agent", "model": "", "name": "agent"},
        chat_span("e2e-t1", "call", "root", tags=["prod"]),
        chat_span("e2e-t1", "bad span id!", "root"),
        chat_span("e2e-t2", "solo", model="claude-3-5-haiku", provider="anthropic"),
    ]
    reply = alice.post("/v1/traces/spans", json={"spans": spans})
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == 3
    (rejected,) = reply.json()["rejected"]
    assert rejected["index"] == 2
    assert rejected["field"] == "span_id"
    # A retried batch adds nothing.
    assert alice.post("/v1/traces/spans", json={"spans": spans}).json()["accepted"] == 3

    listed = alice.get("/v1/traces", params={"model": "gpt-4o", "tags": "prod"}).json()
    assert [s["span_id"] for s in listed["spans"]] == ["call"]
    call = listed["spans"][0]
    assert call["kind"] == "llm"
    assert call["timing"]["duration_ms"] == 1500
    assert call["cost"]["total_usd"] > 0  # from the price table
    assert call["request"]["headers"]["Accept"] == "application/json"
    roots = alice.get("/v1/traces", params={"roots_only": "true"}).json()["spans"]
    assert {s["span_id"] for s in roots} == {"root", "solo"}
    bad = alice.get("/v1/traces", params={"min_duration_ms": "fast"})
    assert bad.status_code == 400

    tree = alice.get("/v1/traces/e2e-t1").json()
    assert tree["span_count"] == 2
    assert tree["roots"][0]["span"]["span_id"] == "root"
    assert [c["span"]["span_id"] for c in tree["roots"][0]["children"]] == ["call"]
    assert suite.client("mallory").get("/v1/traces/e2e-t1").status_code == 404
    assert suite.client("mallory").get("/v1/traces").json()["spans"] == []

    analytics = alice.get("/v1/traces/analytics", params={"group_by": "model"}).json()
    rows = {row["group"]: row for row in analytics["rows"]}
    assert rows["gpt-4o"]["count"] == "1"
    assert rows["gpt-4o"]["latency_ms"]["p50"] == 1500
    assert rows["claude-3-5-haiku"]["total_cost_usd"] > 0

    exported = alice.get("/v1/traces/export", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["span_id"] for row in table} == {"root", "call", "solo"}
    as_json = alice.get("/v1/traces/export", params={"format": "json", "trace_id": "e2e-t1"})
    assert [s["span_id"] for s in json.loads(as_json.text)] == ["root", "call"]
    lines = alice.get("/v1/traces/export", params={"format": "jsonl"}).text.splitlines()
    assert len(lines) == 3
    for text in (exported.text, as_json.text, "\n".join(lines), json.dumps(listed)):
        assert KEY not in text
    assert KEY not in suite.logs()

    # A batch large enough for the service's worker processes: the same result.
    big = [chat_span("e2e-big", f"s{i:03}") for i in range(100)]
    assert alice.post("/v1/traces/spans", json={"spans": big}).json()["accepted"] == 100
    stored = alice.get("/v1/traces", params={"trace_id": "e2e-big", "page_size": 100}).json()
    assert len(stored["spans"]) == 100
    assert stored["spans"][0]["timing"]["duration_ms"] == 1500
    assert KEY not in json.dumps(stored)

    gone = alice.request(
        "DELETE", "/v1/traces", params={"started_before": "2026-11-28T11:00:00Z"}
    ).json()
    assert gone["deleted"] == "103"
    assert alice.get("/v1/traces").json()["spans"] == []


def test_score_filters_are_query_parameters(suite: Suite) -> None:
    client = suite.client("scores")
    spans = [
        chat_span("e2e-s", "good", evaluation={"groundedness_score": 0.9, "eval_score": 0.8}),
        chat_span("e2e-s", "poor", evaluation={"groundedness_score": 0.1, "eval_score": 0.2}),
        chat_span("e2e-s", "unscored"),
    ]
    assert client.post("/v1/traces/spans", json={"spans": spans}).json()["accepted"] == 3

    def ids(**params: str) -> set[str]:
        reply = client.get("/v1/traces", params=params)
        assert reply.status_code == 200, reply.text
        return {s["span_id"] for s in reply.json()["spans"]}

    assert ids(min_groundedness="0.5") == {"good"}
    assert ids(min_eval_score="0.5") == {"good"}
    assert ids(eval_score_below="0.5") == {"poor"}
    assert ids(min_groundedness="0", eval_score_below="1") == {"good", "poor"}
    (row,) = client.get("/v1/traces/analytics", params={"min_groundedness": "0.5"}).json()["rows"]
    assert row["count"] == "1"
    for value in ("2", "-0.1", "NaN", "Infinity"):
        bad = client.get("/v1/traces", params={"min_groundedness": value})
        assert bad.status_code == 400, (value, bad.text)
        assert "min_groundedness" in bad.json()["error"]["message"]


@pytest.mark.containers
def test_opentelemetry_sdk_exports_through_the_gateway(suite: Suite) -> None:
    """An app instrumented with the OpenTelemetry SDK and the GenAI conventions, exporting
    OTLP/HTTP (protobuf) to the gateway with nothing but an Authorization header."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=f"{suite.url}/v1/traces",
        headers={"Authorization": f"Bearer {suite.token('otel-user')}"},
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "chat-app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e")
    with tracer.start_as_current_span("invoke_agent support") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.provider.name", "openai")
            chat.set_attribute("gen_ai.request.model", "gpt-4o")
            chat.set_attribute("gen_ai.usage.input_tokens", 800)
            chat.set_attribute("gen_ai.usage.output_tokens", 120)
            chat.set_attribute(
                "gen_ai.input.messages", json.dumps([{"role": "user", "content": KEY}])
            )
    provider.force_flush()
    provider.shutdown()

    client = suite.client("otel-user")
    listed = client.get("/v1/traces", params={"model": "gpt-4o"}).json()["spans"]
    assert len(listed) == 1
    chat_span_ = listed[0]
    assert chat_span_["kind"] == "llm"
    assert chat_span_["provider"] == "openai"
    assert chat_span_["usage"]["total_tokens"] == "920"
    assert chat_span_["cost"]["total_usd"] > 0
    assert chat_span_["metadata"]["service.name"] == "chat-app"
    assert KEY not in json.dumps(listed)
    tree = client.get(f"/v1/traces/{chat_span_['trace_id']}").json()
    assert tree["roots"][0]["span"]["kind"] == "agent"
    assert tree["roots"][0]["children"][0]["span"]["span_id"] == chat_span_["span_id"]


def test_otlp_json_with_hex_ids(suite: Suite) -> None:
    client = suite.client("otlp-json")
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "embeddings",
                                "startTimeUnixNano": "1764324000000000000",
                                "endTimeUnixNano": "1764324000250000000",
                                "attributes": [
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "embeddings"},
                                    },
                                    {
                                        "key": "gen_ai.request.model",
                                        "value": {"stringValue": "text-embedding-3-small"},
                                    },
                                ],
                            },
                            {
                                "traceId": "00000000000000000000000000000000",
                                "spanId": "0000000000000001",
                                "name": "bad",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    reply = client.post(
        "/v1/traces", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["partialSuccess"]["rejectedSpans"] == "1"
    (stored,) = client.get("/v1/traces").json()["spans"]
    assert stored["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert stored["kind"] == "embedding"
    assert stored["timing"]["duration_ms"] == 250
    bad_ids = client.post(
        "/v1/traces",
        content=json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}),
        headers={"Content-Type": "application/json"},
    )
    assert bad_ids.status_code == 400
    assert "hex" in bad_ids.json()["error"]["message"]
    assert (
        client.post("/v1/traces", content=b"x", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )
