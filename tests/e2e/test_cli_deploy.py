"""`tunelab deploy ...` against the real suite, on the local provider."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import Suite
from tests.e2e.test_deploy_local import chat_rows, upload

pytestmark = pytest.mark.e2e


def cli(
    suite: Suite, *args: str, timeout: float = 120, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tunelab_cli", "--url", suite.url]
    return subprocess.run(
        [*command, "--token", suite.token("alice"), *args],
        env=suite.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_keys_are_read_from_stdin_and_shown_masked(suite: Suite) -> None:
    key = "rpa_" + "K3y" * 12 + "WXYZ"
    stored = cli(suite, "keys", "set", "runpod", stdin=key + "\n")
    assert stored.returncode == 0, stored.stderr
    listed = cli(suite, "keys", "list")
    assert "...WXYZ" in listed.stdout
    assert key not in listed.stdout + listed.stderr + stored.stdout + stored.stderr
    assert key not in suite.logs()
    assert cli(suite, "keys", "delete", "runpod").returncode == 0
    assert "runpod" not in cli(suite, "keys", "list").stdout


def test_create_watch_succeeds_with_progress(suite: Suite, tmp_path: Path) -> None:
    dataset_id = upload(suite.client("alice"), "cli.jsonl", chat_rows(40))
    done = cli(suite, "deploy", "create", dataset_id, "--max-steps", "4", "--watch")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    deployment_id = done.stdout.split()[0]
    assert deployment_id.startswith("dep_")
    assert "callback_url" in done.stderr  # the checks were shown
    assert f"{deployment_id} succeeded" in done.stderr
    assert "loss=" in done.stderr
    assert "state_changed" in done.stderr  # event lines above the bar

    saved = tmp_path / "model.tar.gz"
    fetched = cli(suite, "deploy", "output", deployment_id, "-o", str(saved))
    assert fetched.returncode == 0, fetched.stderr
    with tarfile.open(saved) as archive:
        assert "./model.npz" in archive.getnames()

    got = cli(suite, "deploy", "get", deployment_id)
    assert got.returncode == 0
    assert '"succeeded"' in got.stdout
    assert deployment_id in cli(suite, "deploy", "list").stdout
    events = cli(suite, "deploy", "events", deployment_id)
    assert events.returncode == 0
    assert "state_changed" in events.stdout


def test_failed_check_exits_2_and_creates_nothing(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "sft.jsonl", chat_rows(10))
    before = {d["id"] for d in alice.get("/v1/deployments").json()["deployments"]}
    preflight = alice.post(
        "/v1/deployments/preflight",
        json={
            "provider": "local",
            "dataset_id": dataset_id,
            "method": "dpo",
            "limits": {"max_runtime_minutes": 60, "max_cost_usd": 5},
        },
    ).json()
    message = next(c["message"] for c in preflight["checks"] if c["name"] == "dataset_format")

    done = cli(suite, "deploy", "create", dataset_id, "--method", "dpo")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert done.stdout == ""
    assert {d["id"] for d in alice.get("/v1/deployments").json()["deployments"]} == before


def test_cancelled_run_watch_exits_1(suite: Suite) -> None:
    dataset_id = upload(suite.client("alice"), "long.jsonl", chat_rows(10))
    created = cli(suite, "deploy", "create", dataset_id, "--max-steps", "10000000")
    assert created.returncode == 0, created.stderr
    deployment_id = created.stdout.strip()
    cancelled = cli(suite, "deploy", "cancel", deployment_id)
    assert cancelled.returncode == 0, cancelled.stderr
    watched = cli(suite, "deploy", "watch", deployment_id, timeout=60)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert f"{deployment_id} cancelled" in watched.stderr
