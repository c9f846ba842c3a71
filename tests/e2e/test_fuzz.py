"""Property-based fuzzing of the whole HTTP API with schemathesis, from the gateway's own
/openapi.json, against the real suite on both databases: every operation, authenticated, in
all of schemathesis's phases (examples, coverage, fuzzing, and stateful sequences along the
document's links). The bar is no 5xx, ever.

`make test` runs a fixed seed and a modest number of examples per operation; `make fuzz` runs
many more with a fresh seed (TUNELAB_FUZZ_EXAMPLES, TUNELAB_FUZZ_SEED).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PgDatabases
from tests.e2e.conftest import Suite, suite_on
from tests.e2e.fuzz_hooks import CHAT_TRACE, RAG_TRACE
from tests.e2e.test_cli_eval import rag_trace
from tests.e2e.test_deploy_local import chat_rows, request, upload, wait_until
from tests.e2e.test_tracing_http import chat_span

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("TUNELAB_FUZZ_SEED", "20261204"))
# A watch is a stream that lasts until the run ends: the fuzzer reads it to its end.
SHORT_WATCHES = {"TUNELAB_DEPLOY_WATCH_MAX_SECONDS": "2"}
CHECKS = [{"kind": "contains", "params": {"value": "Paris"}}, {"kind": "pii"}]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> Iterator[Suite]:
    with suite_on(request.param, tmp_path_factory, pg, **SHORT_WATCHES) as running:
        yield running


def seed(suite: Suite) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Real ids for path parameters, so that the fuzzer reaches past NOT_FOUND: those of every
    operation, and those of single operations by their operationId."""
    alice = suite.client("fuzzer")
    dataset_id = upload(alice, "fuzz.jsonl", chat_rows(20))
    token = alice.post(f"/v1/datasets/{dataset_id}/download-tokens", json={"max_uses": 100})
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=3))
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"succeeded"})
    spans = [chat_span(CHAT_TRACE, f"span-{i}") for i in range(3)]
    spans += rag_trace(RAG_TRACE, "The Eiffel Tower is in Paris.", "s1")
    assert alice.post("/v1/traces/spans", json={"spans": spans}).json()["accepted"] == 6
    judged = alice.post("/v1/evaluations", json={"trace_id": RAG_TRACE, "validators": CHECKS})
    assert judged.status_code == 200, judged.text
    rule, doomed = (
        alice.post("/v1/eval-rules", json={"name": name, "validators": CHECKS}).json()["rule"]
        for name in ("fuzz", "deleted by the fuzzer")
    )
    job = alice.post(f"/v1/eval-rules/{rule['id']}/jobs", json={}).json()["job"]
    everywhere = {
        "token": suite.remember(token.json()["token"]),
        "deployment_id": deployment_id,
        "trace_id": CHAT_TRACE,
        "judgment_id": judged.json()["judgment"]["id"],
        "rule_id": rule["id"],
        "job_id": job["id"],
    }
    # The deletes are given what the other operations do not go on using: another rule, and a
    # time before the seeded traces (which the evaluations and rules need) started.
    return everywhere, {
        "DeleteRule": {"rule_id": doomed["id"]},
        "DeleteSpans": {"started_before": "2026-01-01T00:00:00Z"},
    }


def test_no_operation_answers_a_server_error(fuzzed: Suite, tmp_path: Path) -> None:
    everywhere, by_operation = seed(fuzzed)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        _parameters("[parameters]", everywhere)
        + "".join(
            _parameters(
                f'[[operations]]\ninclude-operation-id = "{name}"\n[operations.parameters]', values
            )
            for name, values in by_operation.items()
        )
    )
    junit = tmp_path / "junit.xml"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        f"{fuzzed.url}/openapi.json",
        *("--header", f"Authorization: Bearer {fuzzed.token('fuzzer', ttl=3600)}"),
        *("--checks", "not_a_server_error"),
        *("--max-examples", str(EXAMPLES), "--seed", str(SEED)),
        *("--generation-database", "none", "--request-timeout", "30", "--no-color"),
        *("--report", "junit", "--report-junit-path", str(junit)),
    ]
    # Run from the test's directory: schemathesis keeps files where it runs.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks", "PYTHONPATH": root}
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    output = done.stdout + done.stderr
    summary = re.search(r"(\d+) generated, (\d+) (passed|found)", output)
    assert summary is not None, output[-4000:]
    print(f"\nschemathesis seed {SEED}: {summary.group(0)} over {_operations(output)} operations")
    assert done.returncode == 0, output[-6000:]
    assert int(summary.group(1)) >= EXAMPLES * 30  # every operation had its examples
    assert "unhandled error" not in fuzzed.logs()
    for name, process in fuzzed.processes.items():
        assert process.poll() is None, f"{name} died under the fuzzer"


def _parameters(table: str, values: dict[str, str]) -> str:
    return table + "\n" + "".join(f'"{name}" = "{value}"\n' for name, value in values.items())


def _operations(output: str) -> str:
    tested = re.search(r"Tested: (\d+)", output)
    return tested.group(1) if tested else "?"
