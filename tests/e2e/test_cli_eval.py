"""`tunelab eval run|list|summary|validators` against the real suite, on both databases: RAG
traces ingested over HTTP are judged by validators and offline groundedness from the command
line, and the judgments are read back as tables and JSON."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.e2e.conftest import Suite
from tests.e2e.test_cli_deploy import cli
from tests.e2e.test_cli_traces import ingest, ok

pytestmark = pytest.mark.e2e

DOCS = [
    "The Eiffel Tower is in Paris, France. It was completed in 1889.",
    "Paris is the capital of France.",
]
GOOD = "The Eiffel Tower is in Paris. It was completed in 1889."
BAD = "The Eiffel Tower is in Rome. Write to jane.doe@example.com for tickets."
CHECKS = ("--validator", 'contains:{"value":"Paris"}', "--validator", "pii")
RUN = (*CHECKS, "--groundedness", "offline")
# The `eval run` of each trace the module judges, by its name.
Runs = dict[str, subprocess.CompletedProcess[str]]


def rag_trace(trace: str, answer: str, session: str) -> list[dict[str, Any]]:
    """A RAG call as an app records it (tests/contract/eval_fixtures.py's, as HTTP JSON): a
    chain, its retrieval and its LLM call."""

    def span(span_id: str, parent: str, start: str, **extra: Any) -> dict[str, Any]:
        timing = {"start_time": f"2026-12-02T08:00:{start}Z", "end_time": "2026-12-02T08:00:09Z"}
        return {
            "trace_id": trace,
            "span_id": span_id,
            "parent_span_id": parent,
            "timing": timing,
            "session": {"session_id": session},
            **extra,
        }

    return [
        span("root", "", "00", name="answer", kind="chain"),
        span(
            "retrieve",
            "root",
            "01",
            name="retrieve",
            kind="retrieval",
            output=[{"document": {"content": doc}} for doc in DOCS],
        ),
        span(
            "llm",
            "root",
            "02",
            name="chat",
            kind="llm",
            model="gpt-4o",
            input=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
            output=[{"role": "assistant", "content": answer}],
            usage={"input_tokens": 120, "output_tokens": 30},
        ),
    ]


@pytest.fixture(scope="module")
def runs(suite: Suite) -> Runs:
    """alice's two RAG traces, judged once each from the command line: cli-eval-good (grounded,
    in session s-good) and cli-eval-bad (not grounded, an e-mail address, in session s-bad).
    The module's only judgments: the tests below make none, so its numbers hold in any order."""
    ingest(
        suite, rag_trace("cli-eval-good", GOOD, "s-good") + rag_trace("cli-eval-bad", BAD, "s-bad")
    )
    return {name: cli(suite, "eval", "run", f"cli-eval-{name}", *RUN) for name in ("good", "bad")}


def cells(line: str) -> list[str]:
    """A table row's cells: the columns are two or more spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def table(stdout: str) -> list[list[str]]:
    """A table's rows, the header left out."""
    return [cells(line) for line in stdout.splitlines()[1:]]


def checks(stdout: str) -> dict[str, list[str]]:
    """The check table of `eval run`: each check's RESULT and SCORE by its name."""
    lines = stdout.splitlines()
    start = lines.index("") + 1  # the table follows the judgment's three lines and a blank
    assert cells(lines[start]) == ["CHECK", "RESULT", "SCORE", "WEIGHT", "REASON"]
    rows = [cells(line) for line in lines[start + 1 : lines.index("", start)]]
    return {row[0]: row[1:3] for row in rows}


def judgment_id(stdout: str) -> str:
    """The id in `eval run`'s third line: "judgment jdg_..., attempt 1, ..."."""
    return stdout.splitlines()[2].split()[1].rstrip(",")


def test_run_prints_the_verdict_and_exits_by_it(suite: Suite, runs: Runs) -> None:
    good, bad = runs["good"], runs["bad"]
    assert (good.returncode, good.stderr) == (0, ""), good.stderr
    lines = good.stdout.splitlines()
    assert lines[0] == "PASSED  score 1.00"
    assert lines[1] == "trace cli-eval-good  span llm  model gpt-4o  session s-good"
    assert re.fullmatch(r"judgment jdg_\w+, attempt 1, \d{4}-\d\d-\d\d [\d:]{8} UTC", lines[2])
    assert checks(good.stdout) == {
        "contains": ["pass", "1.00"],
        "pii": ["pass", "1.00"],
        "groundedness": ["pass", "1.00"],
    }
    assert "groundedness (offline): 1.00, 2 of 2 claims supported" in lines

    assert (bad.returncode, bad.stderr) == (1, ""), bad.stderr
    lines = bad.stdout.splitlines()
    assert lines[0] == "FAILED  score 0.00  failed: contains, pii, groundedness"
    assert lines[1] == "trace cli-eval-bad  span llm  model gpt-4o  session s-bad"
    assert checks(bad.stdout) == {
        "contains": ["FAIL", "0.00"],
        "pii": ["FAIL", "0.00"],
        "groundedness": ["FAIL", "0.00"],
    }
    assert "groundedness (offline): 0.00, 0 of 2 claims supported" in lines
    assert "  unsupported: The Eiffel Tower is in Rome." in lines

    # The same configuration again: the judgment already made, said so on stderr.
    again = cli(suite, "eval", "run", "cli-eval-good", *RUN)
    assert again.returncode == 0, again.stderr
    assert judgment_id(again.stdout) == judgment_id(good.stdout)
    assert "judged before with this configuration" in again.stderr
    # --json: the route's answer as it is, the exit status still the verdict's.
    for name, status in (("good", 0), ("bad", 1)):
        done = cli(suite, "eval", "run", f"cli-eval-{name}", *RUN, "--json")
        assert (done.returncode, done.stderr) == (status, ""), done.stderr
        answer = json.loads(done.stdout)
        assert answer["created"] is False
        judgment = answer["judgment"]
        assert judgment["id"] == judgment_id(runs[name].stdout)
        assert judgment["passed"] is (status == 0)
        assert [r["name"] for r in judgment["results"]] == ["contains", "pii", "groundedness"]
        stored = suite.client("alice").get(f"/v1/judgments/{judgment['id']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["judgment"] == judgment


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("cli-eval-good", "--validator", 'contains:{"value": Paris}'),
            """tunelab: --validator 'contains:{"value": Paris}': the parameters are not valid """
            "JSON: Expecting value at character 11",
        ),
        (
            ("cli-eval-good", "--validator", "nosuch"),
            "tunelab: validators[0].kind: must be one of char_length, contains,",
        ),
        (
            ("cli-eval-good", "--validator", 'regex:{"pattern": "(x"}'),
            "tunelab: validators[0].params.pattern: is not a valid regular expression",
        ),
        (
            ("cli-eval-good", "--validator", 'contains:{"values": ["Paris"]}'),
            "tunelab: validators[0].params",
        ),
        (("cli-eval-good",), "tunelab: nothing to check: give --validator"),
        (("cli-eval-none", *RUN), "tunelab: trace 'cli-eval-none' not found (HTTP 404, NOT_FOUND)"),
    ],
)
@pytest.mark.usefixtures("runs")  # the trace exists: each refusal is for its own reason
def test_run_refusals_are_one_clear_line(suite: Suite, args: tuple[str, ...], said: str) -> None:
    done = cli(suite, "eval", "run", *args)
    assert (done.returncode, done.stdout) == (1, ""), done.stdout
    assert done.stderr.startswith(said), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    if "validators[0]" in said:
        assert done.stderr.endswith("(HTTP 400, INVALID_ARGUMENT)\n"), done.stderr


def test_list_by_trace_session_and_verdict(suite: Suite, runs: Runs) -> None:
    good, bad = (judgment_id(runs[name].stdout) for name in ("good", "bad"))
    header = ok(suite, "eval", "list").splitlines()[0]
    assert cells(header) == [
        *("CREATED (UTC)", "JUDGMENT", "TRACE", "MODEL", "SCORE", "RESULT", "FAILED CHECKS")
    ]
    (row,) = table(ok(suite, "eval", "list", "--trace", "cli-eval-good"))
    assert row[1:] == [good, "cli-eval-good", "gpt-4o", "1.00", "pass", "-"]
    (row,) = table(ok(suite, "eval", "list", "--session", "s-bad"))
    assert row[1:] == [bad, "cli-eval-bad", "gpt-4o", "0.00", "FAIL", "contains, pii, groundedness"]
    assert [r[1] for r in table(ok(suite, "eval", "list", "--failed"))] == [bad]
    assert [r[1] for r in table(ok(suite, "eval", "list", "--passed"))] == [good]
    assert sorted(r[1] for r in table(ok(suite, "eval", "list"))) == sorted([good, bad])

    answer = json.loads(ok(suite, "eval", "list", "--failed", "--json"))
    assert [j["id"] for j in answer["judgments"]] == [bad]
    assert answer["judgments"][0]["failed"] == ["contains", "pii", "groundedness"]
    nothing = cli(suite, "eval", "list", "--session", "s-none")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "no judgments" in nothing.stderr


def test_summary_by_validator(suite: Suite, runs: Runs) -> None:
    assert [done.returncode for done in runs.values()] == [0, 1]
    shown = ok(suite, "eval", "summary", "--by", "validator")
    assert cells(shown.splitlines()[0]) == [
        *("GROUP", "COUNT", "PASS RATE", "MEAN", "P50", "P90", "ERRORS")
    ]
    # Each check passed on one trace of two: nearest-rank p50 is the lower score, p90 the upper.
    assert table(shown) == [
        [name, "2", "50.0%", "0.50", "0.00", "1.00", "0"]
        for name in ("contains", "groundedness", "pii")
    ]
    # Of the judgments that ran a pii check (both): every check of theirs.
    assert table(ok(suite, "eval", "summary", "--by", "validator", "--validator", "pii")) == table(
        shown
    )
    assert table(ok(suite, "eval", "summary", "--by", "validator", "--failed")) == [
        [name, "1", "0.0%", "0.00", "0.00", "0.00", "0"]
        for name in ("contains", "groundedness", "pii")
    ]
    assert table(ok(suite, "eval", "summary")) == [
        ["(all)", "2", "50.0%", "0.50", "0.00", "1.00", "0"]
    ]
    assert table(ok(suite, "eval", "summary", "--by", "model", "--session", "s-good")) == [
        ["gpt-4o", "1", "100.0%", "1.00", "1.00", "1.00", "0"]
    ]
    raw = json.loads(ok(suite, "eval", "summary", "--by", "validator", "--json"))
    direct = suite.client("alice").get("/v1/evaluations/summary", params={"group_by": "validator"})
    assert raw == direct.json()
    assert {(r["group"], r["count"], r["passed"]) for r in raw["rows"]} == {
        (name, "2", "1") for name in ("contains", "groundedness", "pii")
    }


def test_validators_lists_the_kinds_and_their_parameters(suite: Suite) -> None:
    lines = ok(suite, "eval", "validators").splitlines()
    kinds = suite.client("alice").get("/v1/evaluations/validators").json()["kinds"]
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == [
        kind["kind"] for kind in kinds
    ]
    at = lines.index("contains (passes at 1): The output contains the value.")
    assert lines[at + 1 : at + 3] == [
        "    case_sensitive: boolean (default true)",
        "    value: string (required)",
    ]
    assert any(line.startswith("pii (passes at 1): ") for line in lines)
    assert any(line.startswith("levenshtein (passes at 0.75): ") for line in lines)
    assert json.loads(ok(suite, "eval", "validators", "--json")) == {"kinds": kinds}
