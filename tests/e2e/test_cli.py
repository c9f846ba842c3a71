"""`make run`'s launcher and the CLI, as a newcomer would use them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def test_dev_launcher_token_upload_list_link_and_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    # Nothing of the caller's own tunelab settings: the launcher must work from its defaults,
    # but for the addresses, each a free port (a default one may be taken by another suite on
    # the machine; the gateway finds each service by its own variable).
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNELAB_")}
    env |= {
        "TUNELAB_GATEWAY_PORT": str(port),
        "TUNELAB_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TUNELAB_URL": f"http://127.0.0.1:{port}",
        **{
            f"TUNELAB_{service.upper()}_{kind}_ADDRESS": f"127.0.0.1:{free_port()}"
            for service in ("datasets", "deploy", "tracing", "eval")
            for kind in ("GRPC", "METRICS")
        },
        "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    cli = [sys.executable, "-m", "tunelab_cli"]
    launcher = subprocess.Popen(
        [*cli, "dev"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert launcher.poll() is None, launcher.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the suite did not come up"
            time.sleep(0.2)

        secrets_dir = tmp_path / "var" / "secrets"
        for name in ("jwt-secret", "internal-token"):
            assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
        assert (tmp_path / "var" / "datasets.db").exists()

        def run(*args: str) -> str:
            done = subprocess.run(
                [*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        token = run("token", "--user", "alice").strip()
        listed = httpx.get(
            f"http://127.0.0.1:{port}/v1/datasets", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200

        data = tmp_path / "chat.jsonl"
        row = {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        }
        data.write_text((json.dumps(row) + "\n") * 50)
        dataset = json.loads(run("--user", "alice", "datasets", "upload", str(data)))
        assert (dataset["name"], dataset["row_count"]) == ("chat.jsonl", "50")
        assert dataset["id"] in run("--user", "alice", "datasets", "list")
        assert dataset["id"] not in run("--user", "bob", "datasets", "list")
        link = json.loads(
            run("--user", "alice", "datasets", "link", dataset["id"], "--max-uses", "2")
        )
        assert httpx.get(link["url"]).content == data.read_bytes()

        def fails(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True
            )

        refused = fails("--user", "bob", "datasets", "get", dataset["id"])
        assert refused.returncode == 1
        assert "not found (HTTP 404, NOT_FOUND)" in refused.stderr
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"text": "fine"}\n{"text": \n')
        stored_but_invalid = fails("--user", "alice", "datasets", "upload", str(broken))
        assert stored_but_invalid.returncode == 2
        assert "not usable for training: line 2 is not valid JSON" in stored_but_invalid.stderr
    finally:
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_token_without_a_dev_key_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    done = subprocess.run(
        [sys.executable, "-m", "tunelab_cli", "token", "--user", "x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "no development signing key" in done.stderr
