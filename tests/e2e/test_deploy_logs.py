"""A run's log end to end on the local provider: the pod's bootstrap and trainer lines reach the
control plane with its job token, and its owner reads them over HTTP (server-sent events) and
with `tunelab deploy logs`, after the run and while it trains, across a restart of the deploy
service; hostile pushes are refused or bounded, never a 500."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Suite
from tests.e2e.test_cli_deploy import cli
from tests.e2e.test_deploy_local import (
    JOB_TOKEN,
    TERMINAL,
    _job_token_of,
    chat_rows,
    request,
    upload,
    wait_until,
)

pytestmark = pytest.mark.e2e

DOWNLOAD_TOKEN = re.compile(r"tldl_[A-Za-z0-9_-]{20,}")


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each `message` event of a server-sent event stream, read to its end."""
    found: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            assert line == "event: message", line
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            found.append((event_id, json.loads(data)))
            event_id, data = "", ""
    return found


def read_log(
    client: httpx.Client, deployment_id: str, headers: dict[str, str] | None = None
) -> list[tuple[int, str]]:
    with client.stream(
        "GET", f"/v1/deployments/{deployment_id}/logs", headers=headers or {}
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        found = events(response)
    lines = [(int(line["sequence"]), line["text"]) for _, data in found for line in data["lines"]]
    for event_id, data in found:  # each event's id is the sequence of its last line
        assert event_id == (str(data["lines"][-1]["sequence"]) if data["lines"] else "")
    return lines


def start(suite: Suite, dataset_rows: int = 50, **hyperparameters: Any) -> str:
    alice = suite.client("alice")
    dataset_id = upload(alice, "logs.jsonl", chat_rows(dataset_rows))
    created = alice.post("/v1/deployments", json=request(dataset_id, **hyperparameters))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_a_finished_runs_log_is_read_over_http_and_with_the_cli(suite: Suite) -> None:
    alice = suite.client("alice")
    deployment_id = start(suite)
    done = wait_until(alice, deployment_id, TERMINAL)
    assert done["state"] == "succeeded", done
    lines = read_log(alice, deployment_id)
    sequences = [sequence for sequence, _ in lines]
    assert sequences == list(range(1, len(lines) + 1))  # every line, once, in order
    text = "\n".join(line for _, line in lines)
    # The bootstrap's own lines, the trainer's, and the last ones before the final report.
    assert f"tunelab: deployment {deployment_id} starting" in text
    assert "dataset downloaded" in text
    assert "TUNELAB_PROGRESS " in text
    assert "training finished" in text
    assert not JOB_TOKEN.search(text)
    assert not DOWNLOAD_TOKEN.search(text)

    resumed = read_log(alice, deployment_id, {"Last-Event-ID": "3"})
    assert resumed == lines[3:]
    shown = cli(suite, "deploy", "logs", deployment_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [line for _, line in lines]
    followed = cli(suite, "deploy", "logs", deployment_id, "--follow", timeout=60)
    assert followed.stdout == shown.stdout  # a finished run's follow ends at once

    mallory = suite.client("mallory")
    assert mallory.get(f"/v1/deployments/{deployment_id}/logs").status_code == 404
    assert httpx.get(f"{suite.url}/v1/deployments/{deployment_id}/logs").status_code == 401
    as_mallory = ("--url", suite.url, "--token", suite.token("mallory"))
    stolen = subprocess.run(
        [sys.executable, "-m", "tunelab_cli", *as_mallory, "deploy", "logs", deployment_id],
        env=suite.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stolen.returncode != 0
    assert "training finished" not in stolen.stdout + stolen.stderr


def test_a_follow_sends_lines_while_the_run_trains_and_ends_with_it(suite: Suite) -> None:
    alice = suite.client("alice")
    deployment_id = start(suite, max_steps=10_000_000)
    wait_until(alice, deployment_id, {"training"})
    seen: list[tuple[float, str]] = []

    def progress_spread() -> float:
        times = [at for at, line in list(seen) if "TUNELAB_PROGRESS" in line]
        return times[-1] - times[0] if times else 0.0

    def cancel_once_progress_streamed() -> None:
        deadline = time.monotonic() + 60
        while progress_spread() < 1.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})

    canceller = threading.Thread(target=cancel_once_progress_streamed)
    canceller.start()
    url = f"/v1/deployments/{deployment_id}/logs"
    with alice.stream("GET", url, params={"follow": "true"}, timeout=90) as response:
        assert response.status_code == 200
        ids = [int(event_id) for event_id, _ in events_live(response, seen) if event_id]
    canceller.join()
    assert alice.get(f"/v1/deployments/{deployment_id}").json()["state"] == "cancelled"
    # Lines arrived while it trained, batch after batch, not all at the end.
    assert progress_spread() >= 1.0
    assert ids == sorted(set(ids))
    assert [line for _, line in seen] == [line for _, line in read_log(alice, deployment_id)]


def events_live(
    response: httpx.Response, seen: list[tuple[float, str]]
) -> list[tuple[str, dict[str, Any]]]:
    """Like `events`, noting each line's arrival time as it comes."""
    found: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            message = json.loads(data)
            seen.extend((time.monotonic(), entry["text"]) for entry in message["lines"])
            found.append((event_id, message))
            event_id, data = "", ""
    return found


def test_the_cli_follows_across_a_restart_of_the_deploy_service_without_duplicates(
    suite: Suite,
) -> None:
    alice = suite.client("alice")
    deployment_id = start(suite, max_steps=10_000_000)
    wait_until(alice, deployment_id, {"training"})
    command = [sys.executable, "-m", "tunelab_cli", "--url", suite.url]
    follower = subprocess.Popen(
        [*command, "--token", suite.token("alice"), "deploy", "logs", deployment_id, "-f"],
        env=suite.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed: list[str] = []
        reader = threading.Thread(
            target=lambda: printed.extend(line.rstrip("\n") for line in follower.stdout or [])
        )
        reader.start()

        def progress_lines() -> int:
            return sum("TUNELAB_PROGRESS" in line for line in list(printed))

        deadline = time.monotonic() + 60
        while progress_lines() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert progress_lines() >= 2, printed
        suite.kill("deploy")
        time.sleep(1)
        suite.start("deploy")
        before = progress_lines()
        deadline = time.monotonic() + 60
        while progress_lines() < before + 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert progress_lines() >= before + 4, "no new lines after the restart"
        cancelled = alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})
        assert cancelled.status_code == 200, cancelled.text
        assert follower.wait(timeout=60) == 0, follower.stderr.read() if follower.stderr else ""
        reader.join(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
    stderr = follower.stderr.read() if follower.stderr else ""
    assert "reconnecting" in stderr  # it did lose the stream, and came back
    logged = [line for _, line in read_log(alice, deployment_id)]
    assert printed == logged  # each line once, none missed


def test_hostile_pushes_are_refused_or_bounded(suite: Suite) -> None:
    alice = suite.client("alice")
    deployment_id = start(suite, max_steps=10_000_000)
    wait_until(alice, deployment_id, {"training"})
    token = _job_token_of(suite, deployment_id)
    url = f"{suite.url}/v1/deployments/{deployment_id}/logs"

    def push(body: object, token: str = token, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(url, json=body, headers=headers, timeout=30, **kwargs)

    # Far ahead of the pod's own numbers: these tests write where the pod never will.
    base = 1_000_000_000
    for wrong in ("tljb_" + "W" * 43, "", suite.token("alice")):
        refused = push({"first_line": base, "lines": ["forged"]}, wrong)
        assert refused.status_code == 401, refused.text
    assert push({"first_line": base, "lines": ["x"] * 501}).status_code == 400
    assert push({"first_line": 0, "lines": ["x"]}).status_code == 400
    assert push({"first_line": base, "lines": "not a list"}).status_code == 400
    for not_an_object in (b'[{"first_line": 1, "lines": ["x"]}]', b'"x"', b"7", b"null"):
        refused = httpx.post(
            url,
            content=not_an_object,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert refused.status_code == 400, (not_an_object, refused.text)
        assert "the body must be a JSON object" in refused.json()["error"]["message"]
    too_big = httpx.post(
        url,
        content=b'{"first_line": 1, "lines": ["' + b"x" * (2 << 20) + b'"]}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert too_big.status_code == 413
    assert not any("forged" in line or line == "x" for _, line in read_log(alice, deployment_id))

    huge = push({"first_line": base, "lines": ["y" * 500_000, f"and {token}"]})
    assert huge.status_code == 200, huge.text
    assert huge.json()["last_line"] == base + 1
    assert read_log(alice, deployment_id)[-2:] == [
        (base, "y" * 1000),
        (base + 1, "and [REDACTED]"),
    ]
    for start_at in range(base + 2, base + 2 + 60 * 500, 500):  # a flood: 30,000 lines
        flood = push({"first_line": start_at, "lines": [f"flood {start_at}"] * 500})
        assert flood.status_code == 200, flood.text
    alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})
    lines = read_log(alice, deployment_id)
    assert len(lines) == 10_000  # the bound: the newest lines only
    assert lines[-1][1] == f"flood {base + 2 + 59 * 500}"
    kinds = [
        e["kind"] for e in alice.get(f"/v1/deployments/{deployment_id}/events").json()["events"]
    ]
    assert kinds.count("log_truncated") == 1
    assert not JOB_TOKEN.search(suite.logs())
