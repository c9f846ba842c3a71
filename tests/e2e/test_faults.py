"""Faults survived, nothing lost: each service killed with SIGKILL in the middle of its work and
started again, with real processes on both databases, and PostgreSQL restarted under load.

Each test prints what it counted (run with -s to see it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import PgDatabases
from tests.e2e import processes
from tests.e2e.conftest import Suite, suite_on, wait_for
from tests.e2e.test_datasets_http import curl
from tests.e2e.test_deploy_local import (
    TERMINAL,
    chat_rows,
    pod_dir,
    pod_processes_gone,
    request,
    upload,
    wait_until,
)
from tests.e2e.test_tracing_http import chat_span

pytestmark = pytest.mark.e2e

BATCHES, PER_BATCH = 30, 50
READY_WAIT = 1.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def faulty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> Iterator[Suite]:
    with suite_on(
        request.param,
        tmp_path_factory,
        pg,
        # Partial uploads older than a second are swept, every second.
        TUNELAB_DATASETS_STALE_UPLOAD_HOURS=str(1 / 3600),
        TUNELAB_DATASETS_PURGE_INTERVAL_SECONDS="1",
        TUNELAB_TRACING_INGEST_WORKERS="2",
        # The gateway waits this long for a service that is away before it answers 503.
        TUNELAB_GATEWAY_READY_WAIT_SECONDS=str(READY_WAIT),
    ) as running:
        yield running


@dataclass
class Producer:
    """Sends span batches, each until it is acknowledged, as an OpenTelemetry exporter does:
    a batch that got no 200 is sent again (ingest is idempotent)."""

    suite: Suite
    prefix: str
    sent: set[tuple[str, str]] = field(default_factory=set)
    acknowledged: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def run(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        with self.suite.client("alice") as client:
            for batch in range(BATCHES):
                spans = [
                    chat_span(f"{self.prefix}-{batch}", f"s{i}", tags=["fault"])
                    for i in range(PER_BATCH)
                ]
                while not self._send(client, spans):
                    self.retries += 1
                    assert time.monotonic() < deadline, f"not acknowledged: {self.statuses}"
                    time.sleep(0.2)
                self.sent |= {(s["trace_id"], s["span_id"]) for s in spans}
                self.acknowledged += 1

    def _send(self, client: httpx.Client, spans: list[dict[str, object]]) -> bool:
        try:
            reply = client.post("/v1/traces/spans", json={"spans": spans}, timeout=15)
        except httpx.TransportError as exc:
            self._count(type(exc).__name__)
            return False
        self._count(str(reply.status_code))
        assert reply.status_code in (200, 503), reply.text  # never a 500, never a 4xx
        if reply.status_code == 200:
            assert reply.json()["accepted"] == PER_BATCH, reply.text
        return reply.status_code == 200

    def _count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1


def stored(suite: Suite, prefix: str) -> list[tuple[str, str]]:
    """Every stored span of the producer's traces, duplicates kept, read by export."""
    reply = suite.client("alice").get(
        "/v1/traces/export", params={"format": "jsonl", "tags": "fault"}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    rows = [json.loads(line) for line in reply.text.splitlines()]
    return [(r["trace_id"], r["span_id"]) for r in rows if r["trace_id"].startswith(prefix)]


def in_background(work: Producer) -> threading.Thread:
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("victim", ["tracing", "gateway"])
def test_a_kill_mid_ingest_stores_every_span_exactly_once(faulty: Suite, victim: str) -> None:
    producer = Producer(faulty, f"kill-{victim}-{faulty.database_url[:6]}")
    thread = in_background(producer)
    wait_for(lambda: producer.acknowledged >= 5)
    workers = processes.tree(faulty.processes["tracing"].pid)
    assert len(workers) >= 2  # the ingest workers (and multiprocessing's resource tracker)
    faulty.kill(victim)
    if victim == "tracing":
        assert not processes.left_after(workers, 5), "the killed service's workers linger"
    time.sleep(READY_WAIT * 2.5)  # longer than the gateway waits: the producer sees 503s
    faulty.start(victim, wait=False)
    thread.join(120)
    assert not thread.is_alive()
    found = stored(faulty, producer.prefix)
    print(
        f"\n{victim} killed: sent {len(producer.sent)} spans in {BATCHES} batches, "
        f"stored {len(found)}, retried {producer.retries} batches, answers {producer.statuses}"
    )
    assert len(found) == len(set(found))  # no duplicates
    assert set(found) == producer.sent  # no loss
    assert producer.retries > 0  # the kill was felt


def test_deploy_killed_mid_run_adopts_the_pod_and_cleans_up(faulty: Suite) -> None:
    alice = faulty.client("alice")
    dataset_id = upload(alice, "kill-deploy.jsonl", chat_rows(30))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"training"})
    faulty.kill("deploy")
    assert alice.get(f"/v1/deployments/{deployment_id}").status_code == 503
    faulty.start("deploy")
    # The new process adopted the pod: it trains on and reports, and can be cancelled.
    before = alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"]
    wait_for(
        lambda: alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"] > before
    )
    cancelled = alice.post(f"/v1/deployments/{deployment_id}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    assert pod_processes_gone(faulty, deployment_id)
    print(f"\ndeploy killed: run {deployment_id} adopted at step {before}, then cancelled")


def test_a_pod_that_dies_while_deploy_is_down_fails_its_run_with_a_reason(faulty: Suite) -> None:
    alice = faulty.client("alice")
    dataset_id = upload(alice, "kill-both.jsonl", chat_rows(30))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"training"})
    faulty.kill("deploy")
    group = json.loads((pod_dir(faulty, deployment_id) / "pod.json").read_text())["pid"]
    os.killpg(group, 9)  # the machine's OOM killer, say
    faulty.start("deploy")
    failed = wait_until(alice, deployment_id, TERMINAL, seconds=60)
    assert failed["state"] == "failed"
    assert failed["error"]["code"] in {"POD_FAILED", "TRAINER_FAILED", "BOOTSTRAP_FAILED"}
    assert failed["error"]["message"]
    assert pod_processes_gone(faulty, deployment_id)
    print(f"\ndeploy and pod killed: {failed['error']['code']}: {failed['error']['message']}")


def slow_body(total: int, on_half: threading.Event) -> Iterator[bytes]:
    rows = chat_rows(total // 100)
    for start in range(0, len(rows), 64 * 1024):
        if start >= len(rows) // 2:
            on_half.set()
            time.sleep(0.05)
        yield rows[start : start + 64 * 1024]


def test_datasets_killed_mid_upload_refuses_it_and_leaves_no_partial_blob(
    faulty: Suite,
) -> None:
    alice = faulty.client("alice")
    half = threading.Event()
    killer = threading.Thread(target=lambda: (half.wait(30), faulty.kill("datasets")))
    killer.start()
    name = f"cut-{time.monotonic_ns()}.jsonl"
    try:
        reply = alice.post(
            "/v1/datasets", params={"name": name}, content=slow_body(6_000_000, half), timeout=60
        )
        answer = str(reply.status_code)
        assert reply.status_code in (499, 503), reply.text
    except httpx.TransportError as exc:
        answer = type(exc).__name__
    killer.join()
    faulty.start("datasets")
    listed = alice.get("/v1/datasets", params={"page_size": 100}).json()["datasets"]
    assert name not in {d["name"] for d in listed}
    wait_for(lambda: not faulty.unfinished_uploads(), seconds=15)  # swept by housekeeping
    print(f"\ndatasets killed mid-upload: the client got {answer}; no dataset, no partial blob")


@pytest.mark.parametrize("victim", ["gateway", "datasets"])
def test_a_download_cut_by_a_crash_resumes_with_the_same_link(
    faulty: Suite, tmp_path: Path, victim: str
) -> None:
    alice = faulty.client("alice")
    body = chat_rows(40_000)  # about 5 MB
    dataset_id = upload(alice, f"resume-{victim}.jsonl", body)
    link = alice.post(f"/v1/datasets/{dataset_id}/download-tokens", json={"max_uses": 3}).json()
    partial = tmp_path / "partial.jsonl"
    received = 0
    try:
        with httpx.stream("GET", link["url"], timeout=30) as response, partial.open("wb") as out:
            assert response.status_code == 200
            for chunk in response.iter_bytes(64 * 1024):
                out.write(chunk)
                received += len(chunk)
                if received >= 1 << 20 and faulty.processes[victim].poll() is None:
                    faulty.kill(victim)
                    time.sleep(0.2)
                time.sleep(0.01)  # a slow client: the rest is not yet on its way
        outcome = "completed"  # the bytes were already on their way (datasets is not on it)
    except httpx.TransportError as exc:
        outcome = f"cut ({type(exc).__name__})"
        assert victim == "gateway"
    faulty.start(victim)
    if outcome == "completed":
        assert partial.read_bytes() == body
        partial.write_bytes(body[: len(body) // 3])  # then resume an interrupted copy anyway
    resumed = curl("--fail-with-body", "-C", "-", "-o", str(partial), link["url"])
    assert resumed.returncode == 0, resumed.stderr
    assert hashlib.sha256(partial.read_bytes()).digest() == hashlib.sha256(body).digest()
    (token,) = alice.get(f"/v1/datasets/{dataset_id}/download-tokens").json()["download_tokens"]
    assert token["use_count"] == 2  # the cut download and its resumption, each one use
    print(f"\n{victim} killed mid-download: {outcome} after {received} bytes; resumed with curl")


def test_postgresql_restarted_under_load(
    tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> None:
    with suite_on("postgresql", tmp_path_factory, pg) as suite:
        alice = suite.client("alice")
        dataset_id = upload(alice, "pg.jsonl", chat_rows(30))
        created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
        deployment_id = created.json()["id"]
        wait_until(alice, deployment_id, {"training"})
        producer = Producer(suite, "pg-restart")
        thread = in_background(producer)
        wait_for(lambda: producer.acknowledged >= 3)
        restart_postgresql()
        thread.join(120)
        assert not thread.is_alive()
        found = stored(suite, producer.prefix)
        assert len(found) == len(set(found))
        assert set(found) == producer.sent
        assert httpx.get(f"{suite.url}/readyz").status_code == 200
        # The supervisor reconnected too: the run is followed and can be stopped.
        step = alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"]
        wait_for(
            lambda: alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"] > step
        )
        assert alice.post(f"/v1/deployments/{deployment_id}/cancel").status_code == 200
        assert pod_processes_gone(suite, deployment_id)
        logs = suite.logs()
        # Calls in flight during the restart failed as UNAVAILABLE, which the gateway retries
        # (ingest is idempotent) or answers 503; none failed as INTERNAL.
        assert '"code": "UNAVAILABLE"' in logs or producer.statuses.get("503")
        assert '"code": "INTERNAL"' not in logs
        assert "unhandled error" not in logs
        print(
            f"\nPostgreSQL restarted: sent {len(producer.sent)}, stored {len(found)}, "
            f"retried {producer.retries}, answers {producer.statuses}"
        )


def restart_postgresql() -> None:
    """Restart the local cluster (as .ci/run starts it), disconnecting every session, and
    wait until it accepts connections again."""
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    restart = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"]
    done = subprocess.run([*restart, "-m", "fast"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    ready = ["pg_isready", "-h", "127.0.0.1", "-q"]
    while subprocess.run(ready, capture_output=True, timeout=30).returncode != 0:
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)
