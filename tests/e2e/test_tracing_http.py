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

    gone = alice.request(
        "DELETE", "/v1/traces", params={"started_before": "2026-11-28T11:00:00Z"}
    ).json()
    assert gone["deleted"] == "3"
    assert alice.get("/v1/traces").json()["spans"] == []
