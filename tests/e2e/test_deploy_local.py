"""Training runs on the local provider, end to end with real processes: the gateway, the
datasets and deploy services, and the "pod" (the generated bootstrap script, run as a process
group) that downloads the dataset through the gateway and reports with its job token."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.deploy.pod import render
from tests.e2e.conftest import Suite

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_TOKEN = re.compile(r"tljb_[A-Za-z0-9_-]{43}")


def chat_rows(count: int, question: str = "What is {i} plus {i}?") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": question.format(i=i)},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(count)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: httpx.Client, name: str, body: bytes) -> str:
    reply = client.post("/v1/datasets", params={"name": name}, content=body)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def request(dataset_id: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "provider": "local",
        "dataset_id": dataset_id,
        "method": "sft",
        "hyperparameters": {"epochs": 1, **hyperparameters},
        "limits": {"max_runtime_minutes": 10, "max_cost_usd": 1},
    }


def wait_until(
    client: httpx.Client, deployment_id: str, states: set[str], seconds: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        deployment: dict[str, Any] = client.get(f"/v1/deployments/{deployment_id}").json()
        if deployment["state"] in states:
            return deployment
        time.sleep(0.2)
    raise AssertionError(f"still {deployment['state']} after {seconds} s: {deployment}")


def released(client: httpx.Client, deployment_id: str, seconds: float = 15) -> None:
    """Wait for the supervisor's word that the pod is gone (its pod_terminated event)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        events = client.get(f"/v1/deployments/{deployment_id}/events").json()["events"]
        if any(e["kind"] == "pod_terminated" for e in events):
            return
        time.sleep(0.1)
    raise AssertionError(f"the pod of {deployment_id} was not released in {seconds} s")


def pod_dir(suite: Suite, deployment_id: str) -> Path:
    return suite.var / "pods" / f"tunelab-{deployment_id}"


def pod_processes_gone(suite: Suite, deployment_id: str, seconds: float = 10) -> bool:
    """Whether no process of the pod's process group is left (within `seconds`)."""
    group = json.loads((pod_dir(suite, deployment_id) / "pod.json").read_text())["pid"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not suite.process_group(group):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.containers
def test_a_run_trains_reports_and_leaves_nothing_running(suite: Suite) -> None:
    alice = suite.client("alice")
    # A name full of shell syntax: it must reach no shell as code.
    dataset_id = upload(alice, 'it\'s $(touch pwned) `id` "q".jsonl', chat_rows(150))
    preflight = alice.post("/v1/deployments/preflight", json=request(dataset_id))
    assert preflight.status_code == 200, preflight.text
    assert preflight.json()["ok"] is True
    checks = {c["name"]: c["status"] for c in preflight.json()["checks"]}
    assert checks["dataset_format"] == "pass"
    assert checks["callback_url"] == "pass"

    created = alice.post(
        "/v1/deployments", json=request(dataset_id), headers={"Idempotency-Key": "run-1"}
    )
    assert created.status_code == 201, created.text
    deployment = created.json()
    again = alice.post(
        "/v1/deployments", json=request(dataset_id), headers={"Idempotency-Key": "run-1"}
    )
    assert again.status_code == 201
    assert again.json()["id"] == deployment["id"]

    done = wait_until(alice, deployment["id"], TERMINAL)
    assert done["state"] == "succeeded", done
    assert done["system_info"]["python"].startswith("Python 3")
    assert done["progress"]["step"] == done["progress"]["total_steps"] > 0
    metrics = alice.get(f"/v1/deployments/{deployment['id']}/metrics").json()["metrics"]
    losses = [m["progress"]["loss"] for m in metrics]
    assert len(losses) >= 2, losses
    assert losses[-1] < 0.8 * losses[0], losses
    events = alice.get(f"/v1/deployments/{deployment['id']}/events").json()["events"]
    states = [e["state"] for e in events if e["kind"] == "state_changed"]
    assert states == ["pending", "provisioning", "starting", "downloading", "training", "succeeded"]
    assert pod_processes_gone(suite, deployment["id"])
    # The supervisor confirms the pod gone (and its dataset copy with it) just after.
    released(alice, deployment["id"])
    assert not (pod_dir(suite, deployment["id"]) / "work" / "dataset.jsonl").exists()
    assert not Path("pwned").exists()
    assert not (pod_dir(suite, deployment["id"]) / "pwned").exists()

    # The pod fetched the dataset through the gateway, with its download token, once.
    downloads = alice.get(f"/v1/datasets/{dataset_id}/download-events").json()
    granted = [e for e in downloads["download_events"] if e["outcome"] == "granted"]
    assert len(granted) == 1
    assert granted[0]["bytes_sent"] == granted[0]["bytes_granted"]

    # What it trained came back before the pod went: a .tar.gz of the output directory.
    output = alice.get(f"/v1/deployments/{deployment['id']}/output")
    assert output.status_code == 200, output.text
    assert output.headers["x-checksum-sha256"] == hashlib.sha256(output.content).hexdigest()
    assert done["output"]["size_bytes"] == str(len(output.content))
    with tarfile.open(fileobj=io.BytesIO(output.content)) as archive:
        names = archive.getnames()
        assert "./model.npz" in names
        metrics_json = archive.extractfile("./metrics.json")
        assert metrics_json is not None
        assert json.load(metrics_json)["steps"] == done["progress"]["total_steps"]
    mallory = suite.client("mallory")
    assert mallory.get(f"/v1/deployments/{deployment['id']}/output").status_code == 404
    forged = httpx.put(
        f"{suite.url}/v1/deployments/{deployment['id']}/output",
        content=b"not a model",
        headers={"Authorization": "Bearer tljb_" + "B" * 43},
    )
    assert forged.status_code == 401
    assert alice.get(f"/v1/deployments/{deployment['id']}/output").content == output.content

    # Its owner deletes it (no one else can), and it is gone: the record and the file.
    def stored_outputs() -> int:
        return len(suite.blobs("deploy"))

    kept = stored_outputs()
    assert kept >= 1
    assert mallory.delete(f"/v1/deployments/{deployment['id']}/output").status_code == 404
    assert stored_outputs() == kept
    deleted = alice.delete(f"/v1/deployments/{deployment['id']}/output")
    assert deleted.status_code == 204, deleted.text
    assert stored_outputs() == kept - 1
    assert alice.get(f"/v1/deployments/{deployment['id']}/output").status_code == 404
    assert "output" not in alice.get(f"/v1/deployments/{deployment['id']}").json()
    again = alice.delete(f"/v1/deployments/{deployment['id']}/output")
    assert (again.status_code, again.json()["error"]["reason"]) == (404, "NOT_FOUND")

    # The job token never reached a log (that it is dead now: see the reports test).
    pod_env = (pod_dir(suite, deployment["id"]) / "pod.log").read_text()
    assert not JOB_TOKEN.search(suite.logs() + pod_env)


def test_a_failing_trainer_fails_the_run_with_its_status_and_log_tail(suite: Suite) -> None:
    alice = suite.client("alice")
    long_question = "Please tell me, at length and in detail, what {i} plus {i} makes?"
    dataset_id = upload(alice, "cut.jsonl", chat_rows(20, long_question))
    # Rows cut to 16 bytes keep no assistant text: the trainer refuses with status 2.
    created = alice.post("/v1/deployments", json=request(dataset_id, max_seq_length=16))
    assert created.status_code == 201, created.text
    started = time.monotonic()
    done = wait_until(alice, created.json()["id"], TERMINAL)
    assert done["state"] == "failed"
    assert done["error"]["code"] == "TRAINER_FAILED"
    assert done["error"]["exit_code"] == 2
    assert any("nothing to train on" in line for line in done["error"]["log_tail"])
    assert pod_processes_gone(suite, done["id"])
    assert time.monotonic() - started < 30


def test_cancel_stops_the_pod(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "long.jsonl", chat_rows(200))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"training"})
    cancelled = alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert pod_processes_gone(suite, deployment_id)
    again = alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})
    assert again.json()["state"] == "cancelled"


def test_a_restarted_deploy_service_takes_over_the_runs_of_the_last_one(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "restart.jsonl", chat_rows(50))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"training"})
    suite.restart("deploy", "services.deploy")
    # The pod trained on meanwhile, and the new process knows it and can stop it.
    assert alice.get(f"/v1/deployments/{deployment_id}").json()["state"] == "training"
    steps = alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"]
    time.sleep(2.5)
    assert alice.get(f"/v1/deployments/{deployment_id}").json()["progress"]["step"] > steps
    # Its supervisor watches the pod: a pod killed from outside fails the run.
    group = json.loads((pod_dir(suite, deployment_id) / "pod.json").read_text())["pid"]
    os.killpg(group, signal.SIGKILL)
    failed = wait_until(alice, deployment_id, TERMINAL, seconds=30)
    assert failed["state"] == "failed"
    assert failed["error"]["code"] in {"POD_FAILED", "TRAINER_FAILED"}
    assert pod_processes_gone(suite, deployment_id)


def test_another_users_deployment_and_dataset_are_not_found(suite: Suite) -> None:
    alice, mallory = suite.client("alice"), suite.client("mallory")
    dataset_id = upload(alice, "mine.jsonl", chat_rows(10))
    stolen = mallory.post("/v1/deployments/preflight", json=request(dataset_id))
    assert stolen.status_code == 200
    failed = {c["name"]: c["message"] for c in stolen.json()["checks"] if c["status"] == "fail"}
    assert "dataset" in failed
    assert "not yours" in failed["dataset"]
    refused = mallory.post("/v1/deployments", json=request(dataset_id))
    assert refused.status_code == 400
    assert refused.json()["error"]["reason"] == "PREFLIGHT_FAILED"
    deployment_id = alice.post("/v1/deployments", json=request(dataset_id)).json()["id"]
    for path in ("", "/events", "/metrics", "/watch"):
        assert mallory.get(f"/v1/deployments/{deployment_id}{path}").status_code == 404
    assert mallory.post(f"/v1/deployments/{deployment_id}/cancel", json={}).status_code == 404
    wait_until(alice, deployment_id, TERMINAL)


def test_dpo_on_an_sft_dataset_is_refused_before_anything_is_rented(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "chat.jsonl", chat_rows(10))
    body = {**request(dataset_id), "method": "dpo"}
    check = alice.post("/v1/deployments/preflight", json=body).json()
    assert check["ok"] is False
    message = next(c["message"] for c in check["checks"] if c["name"] == "dataset_format")
    assert "prompt, chosen, rejected" in message
    assert "use method sft" in message

    def runs() -> set[str]:  # other tests' runs may change state meanwhile: compare ids
        return {d["id"] for d in alice.get("/v1/deployments").json()["deployments"]}

    before = runs()
    assert alice.post("/v1/deployments", json=body).status_code == 400
    assert runs() == before


def test_reports_need_the_deployments_own_live_job_token(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "r.jsonl", chat_rows(10))
    running = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000)).json()
    wait_until(alice, running["id"], {"training"})
    token = _job_token_of(suite, running["id"])
    other = alice.post("/v1/deployments", json=request(dataset_id)).json()
    report = {"phase": "training", "progress": {"step": 1}}

    def post(deployment_id: str, headers: dict[str, str]) -> httpx.Response:
        url = f"{suite.url}/v1/deployments/{deployment_id}/reports"
        return httpx.post(url, json=report, headers=headers)

    bearer = {"Authorization": f"Bearer {token}"}
    assert post(running["id"], bearer).status_code == 200
    # No token, the user's JWT, a made-up token, this token for another deployment: all 401.
    assert post(running["id"], {}).status_code == 401
    assert post(running["id"], dict(alice.headers)).status_code == 401
    assert post(running["id"], {"Authorization": "Bearer tljb_" + "A" * 43}).status_code == 401
    crossed = post(other["id"], bearer)
    assert crossed.status_code == 401
    assert token not in crossed.text
    # A token in the query string is not read: tokens stay out of URLs (and logs).
    url = f"{suite.url}/v1/deployments/{running['id']}/reports?job_token={token}"
    assert httpx.post(url, json=report).status_code == 401
    assert httpx.post(url, json=report, headers=bearer).status_code == 400
    alice.post(f"/v1/deployments/{running['id']}/cancel", json={})
    late = post(running["id"], bearer)
    assert late.status_code == 400
    assert late.json()["error"]["reason"] == "RUN_FINISHED"
    wait_until(alice, other["id"], TERMINAL)
    assert token not in suite.logs()


def _job_token_of(suite: Suite, deployment_id: str) -> str:
    """The job token the pod runs with, read from its process's environment (the test's
    stand-in for a pod)."""
    pid = json.loads((pod_dir(suite, deployment_id) / "pod.json").read_text())["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    token = next(v for v in environ if v.startswith(b"TUNELAB_JOB_TOKEN="))
    return token.split(b"=", 1)[1].decode()


@pytest.mark.containers
def test_watch_streams_server_sent_events_until_the_end(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "w.jsonl", chat_rows(50))
    deployment_id = alice.post("/v1/deployments", json=request(dataset_id)).json()["id"]
    states = []
    with alice.stream("GET", f"/v1/deployments/{deployment_id}/watch") as events:
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:])["deployment"]["state"])
    assert states[-1] == "succeeded"
    assert len(states) >= 2


def test_a_pod_started_again_after_its_run_ended_does_not_run_it_again(suite: Suite) -> None:
    """RunPod restarts a container whose command exits: the bootstrap then runs again in the
    same pod directory. It must neither download (a use of the dataset link) nor train again,
    nor report "starting" as a new run: first the pod's disk says the run ended, and without
    that record the control plane's refusal of the "starting" report does."""
    alice = suite.client("alice")
    dataset_id = upload(alice, "again.jsonl", chat_rows(50))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=4000)).json()
    deployment_id = created["id"]
    wait_until(alice, deployment_id, {"training"}, seconds=60)
    environment = _pod_environment_of(suite, deployment_id)
    done = wait_until(alice, deployment_id, TERMINAL)
    assert done["state"] == "succeeded", done
    released(alice, deployment_id)
    work = pod_dir(suite, deployment_id) / "work"
    assert (work / "finished").read_text().splitlines()[0] == "succeeded"

    def downloads() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = alice.get(
            f"/v1/datasets/{dataset_id}/download-events"
        ).json()["download_events"]
        return events

    def events() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = alice.get(f"/v1/deployments/{deployment_id}/events").json()[
            "events"
        ]
        return found

    seen_downloads, seen_events = downloads(), events()
    assert [e["outcome"] for e in seen_downloads] == ["granted"]

    def start_again() -> str:
        again = subprocess.run(
            render.launch_command(),
            cwd=pod_dir(suite, deployment_id),
            env={**environment, "TUNELAB_LINGER_SECONDS": "0"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        return again.stdout + again.stderr

    output = start_again()
    assert "the run already ended (succeeded) before this container started" in output
    # Its final report, sent once more in case the first was lost, is refused: the run is over.
    assert "the run is over (succeeded)" in output
    assert downloads() == seen_downloads
    assert events() == seen_events
    assert not (work / "dataset.jsonl").exists()

    (work / "finished").unlink()
    output = start_again()
    assert "the control plane says the run is over" in output
    assert downloads() == seen_downloads
    assert events() == seen_events
    assert alice.get(f"/v1/deployments/{deployment_id}").json()["state"] == "succeeded"


def _pod_environment_of(suite: Suite, deployment_id: str) -> dict[str, str]:
    """The environment the pod's command was started with (the packed script, the job token,
    the dataset link), read from its process: what a restarted container gets again."""
    pid = json.loads((pod_dir(suite, deployment_id) / "pod.json").read_text())["pid"]
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (entry.decode().partition("=") for entry in entries if b"=" in entry)
    return {name: value for name, _, value in pairs}
