"""`tunelab traces list|get|export` against the real suite, on both databases."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Suite
from tests.e2e.test_cli_deploy import cli
from tests.e2e.test_tracing_http import chat_span

pytestmark = pytest.mark.e2e

OLD = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def span(
    trace: str, span_id: str, parent: str = "", *, at: datetime = OLD, **extra: Any
) -> dict[str, Any]:
    """A chat span of alice's app, started at `at` and lasting 1.5 s."""
    timing = {
        "start_time": at.isoformat().replace("+00:00", "Z"),
        "end_time": (at + timedelta(milliseconds=1500)).isoformat().replace("+00:00", "Z"),
    }
    return chat_span(trace, span_id, parent, timing=timing, **extra)


def ingest(suite: Suite, spans: list[dict[str, Any]]) -> None:
    reply = suite.client("alice").post("/v1/traces/spans", json={"spans": spans})
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == len(spans), reply.text


def ok(suite: Suite, *args: str) -> str:
    done = cli(suite, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def indent(line: str) -> int:
    """Where a tree row's span name starts."""
    return len(line) - len(line.lstrip("├└│─|`- "))


def listed(suite: Suite, *args: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(ok(suite, "traces", "list", *args, "--json"))
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [s["span_id"] for s in answer["spans"]]


def test_list_filters_pages_and_tree(suite: Suite) -> None:
    recent = datetime.now(UTC) - timedelta(minutes=10)
    ingest(
        suite,
        [
            {**span("cli-t1", "root", tags=["cli"]), "kind": "agent", "model": "", "name": "agent"},
            {
                **span("cli-t1", "fetch", "root", at=OLD + MS * 100, tags=["cli"]),
                "kind": "retrieval",
            },
            span(
                "cli-t1",
                "call",
                "root",
                at=OLD + MS * 200,
                tags=["cli", "cli-prod"],
                session={"session_id": "s1"},
            ),
            {
                **span("cli-t1", "lookup", "call", at=OLD + MS * 500, tags=["cli"]),
                "kind": "tool",
                "name": "search",
            },
            span(
                "cli-t2",
                "solo",
                at=recent,
                tags=["cli"],
                model="claude-3-5-haiku",
                provider="anthropic",
                status="error",
            ),
        ],
    )

    table = ok(suite, "traces", "list", "--model", "gpt-4o", "--tag", "cli-prod").splitlines()
    assert table[0].split()[:4] == ["START", "(UTC)", "TRACE", "SPAN"]
    (row,) = table[1:]
    assert row.startswith("2026-01-05 09:00:00  cli-t1")
    assert "chat" in row
    assert "gpt-4o" in row
    assert "1.50s" in row
    assert "$0.00" in row  # the cost the price table gave it

    assert sorted(ids(listed(suite, "--tag", "cli", "--all"))) == [
        "call",
        "fetch",
        "lookup",
        "root",
        "solo",
    ]
    assert ids(listed(suite, "--session", "s1")) == ["call"]
    assert ids(listed(suite, "--tag", "cli", "--since", "1h")) == ["solo"]
    assert ids(listed(suite, "--tag", "cli", "--status", "error")) == ["solo"]
    assert ids(listed(suite, "--tag", "cli", "--kind", "tool")) == ["lookup"]
    assert sorted(ids(listed(suite, "--tag", "cli", "--roots"))) == ["root", "solo"]
    assert ids(listed(suite, "--trace", "cli-t1", "--until", "2026-01-05T09:00:00Z")) == []

    # Pages: --limit cuts where the next page starts, and --page-token goes on from there.
    first = cli(suite, "traces", "list", "--tag", "cli", "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 3  # the header and two rows
    assert "--page-token" in first.stderr
    one = listed(suite, "--tag", "cli", "--limit", "2")
    assert len(one["spans"]) == 2
    assert one["next_page_token"]
    rest = listed(suite, "--tag", "cli", "--all", "--page-token", one["next_page_token"])
    assert sorted(ids(one) + ids(rest)) == ["call", "fetch", "lookup", "root", "solo"]
    assert rest["next_page_token"] == ""

    nothing = cli(suite, "traces", "list", "--model", "no-such-model")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "no spans" in nothing.stderr
    assert listed(suite, "--model", "no-such-model") == {"spans": [], "next_page_token": ""}

    tree = ok(suite, "traces", "get", "cli-t1").splitlines()
    assert tree[0] == "trace cli-t1: 4 spans"
    assert tree[1].split() == ["SPAN", "KIND", "MODEL", "DURATION", "STATUS", "SPAN", "ID"]
    rows = tree[2:]
    # Depth first, children in start order, each drawn under its parent.
    assert [line.split()[-1] for line in rows] == ["root", "fetch", "call", "lookup"]
    assert [indent(line) for line in rows] == [0, 3, 3, 6]
    assert rows[0].split()[:5] == ["agent", "agent", "-", "1.50s", "-"]
    assert rows[1].startswith(("├─ chat", "|- chat"))
    assert rows[2].startswith(("└─ chat", "`- chat"))
    assert rows[3].startswith(("   └─ search", "   `- search"))
    assert rows[3].split()[-5:] == ["tool", "gpt-4o", "1.50s", "-", "lookup"]
    raw = json.loads(ok(suite, "traces", "get", "cli-t1", "--json"))
    assert raw == suite.client("alice").get("/v1/traces/cli-t1").json()

    missing = cli(suite, "traces", "get", "cli-none")
    assert missing.returncode == 1
    assert "(HTTP 404, NOT_FOUND)" in missing.stderr
    bad_time = cli(suite, "traces", "list", "--since", "yesterday")
    assert bad_time.returncode == 1
    assert "tunelab: --since 'yesterday': give a duration ago" in bad_time.stderr


def test_export_to_a_file_and_to_stdout(suite: Suite, tmp_path: Path) -> None:
    ingest(suite, [span("cli-x1", f"s{i:02}", tags=["export"]) for i in range(30)])
    wanted = {f"s{i:02}" for i in range(30)}

    target = tmp_path / "spans.csv"  # the format from the extension
    done = cli(suite, "traces", "export", "--tag", "export", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"bytes to {target}" in done.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {row["span_id"] for row in rows} == wanted
    assert not list(tmp_path.glob("*.part"))

    jsonl = tmp_path / "out.txt"
    done = cli(suite, "traces", "export", "--format", "jsonl", "--tag", "export", "-o", str(jsonl))
    assert done.returncode == 0, done.stderr
    assert {json.loads(line)["span_id"] for line in jsonl.read_text().splitlines()} == wanted

    streamed = ok(suite, "traces", "export", "--tag", "export")  # JSONL by default
    assert {json.loads(line)["span_id"] for line in streamed.splitlines()} == wanted
    as_csv = ok(suite, "traces", "export", "--format", "csv", "--trace", "cli-x1")
    assert {row["span_id"] for row in csv.DictReader(io.StringIO(as_csv))} == wanted


def test_export_refusals(suite: Suite, tmp_path: Path) -> None:
    bad = cli(suite, "traces", "export", "--min-groundedness", "2")
    assert bad.returncode == 1
    assert "--min-groundedness 2: scores run from 0 to 1" in bad.stderr
    into_dir = cli(suite, "traces", "export", "-o", str(tmp_path))
    assert into_dir.returncode == 1
    assert "is a directory" in into_dir.stderr


def test_min_groundedness(suite: Suite) -> None:
    def scored(span_id: str, groundedness: float | None) -> dict[str, Any]:
        extra = {} if groundedness is None else {"groundedness_score": groundedness}
        return span("cli-g1", span_id, "", tags=["grounded"], evaluation=extra)

    ingest(suite, [scored("high", 0.9), scored("low", 0.3), scored("none", None)])
    direct = suite.client("alice").get(
        "/v1/traces", params={"tags": "grounded", "min_groundedness": 0.5}
    )
    assert direct.status_code == 200, direct.text
    if len(direct.json()["spans"]) != 1:
        pytest.skip("the tracing service does not apply min_groundedness yet (issue 11, item 5)")
    assert ids(listed(suite, "--tag", "grounded", "--min-groundedness", "0.5")) == ["high"]
    (row,) = ok(suite, "traces", "list", "--tag", "grounded", "--min-groundedness", "0.5").split(
        "\n"
    )[1:2]
    assert "0.90" in row
