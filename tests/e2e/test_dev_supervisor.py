"""`tunelab dev` (`make run`) as a supervisor: a crashed service is restarted and says so, the
others keep running, and Ctrl-C leaves no process behind, not even what a crash orphaned."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import jwt
import pytest

from tests.e2e import processes
from tests.e2e.conftest import free_port, ready_within
from tests.e2e.test_deploy_local import chat_rows, request, upload, wait_until

pytestmark = pytest.mark.e2e

JWT_SECRET = "dev-supervisor-test-" + "k" * 32
MODULES = {
    "datasets": "services.datasets",
    "deploy": "services.deploy",
    "tracing": "services.tracing",
    "gateway": "gateway",
}


class Dev:
    """A running `tunelab dev`, its output read as it comes."""

    def __init__(self, var: Path, *args: str, **extra_env: str) -> None:
        self.var = var
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # Nothing of the caller's own tunelab settings; every address a free port.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
        env |= {
            "TUNELAB_VAR_DIR": str(var),
            "TUNELAB_GATEWAY_PORT": str(port),
            "TUNELAB_PUBLIC_URL": self.url,
            "TUNELAB_JWT_SECRET": JWT_SECRET,
            "TUNELAB_DEPLOY_SUPERVISE_INTERVAL_SECONDS": "0.5",
            **{
                f"TUNELAB_{service.upper()}_{kind}_ADDRESS": f"127.0.0.1:{free_port()}"
                for service in ("datasets", "deploy", "tracing", "eval")
                for kind in ("GRPC", "METRICS")
            },
            "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            **extra_env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tunelab_cli", "dev", *args],
            cwd=var.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._cursor = 0  # wait_for looks at the lines from here on
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, seconds: float = 60) -> re.Match[str]:
        """The next line of output that matches `pattern`, waiting for it if need be."""
        deadline = time.monotonic() + seconds
        while True:
            for index in range(self._cursor, len(self.lines)):
                if found := re.search(pattern, self.lines[index]):
                    self._cursor = index + 1
                    return found
            assert self.process.poll() is None, f"tunelab dev ended:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def wait_ready(self, seconds: float = 30) -> None:
        if not ready_within(self.url, seconds):
            raise AssertionError(f"not ready again:\n{self.output()[-3000:]}")

    def services(self) -> dict[str, processes.Process]:
        """The running service and gateway processes, by name."""
        found = {}
        for child in processes.children(self.pid):
            command = processes.command(child[0])
            for name, module in MODULES.items():
                if command.endswith(f" -m {module} "):
                    found[name] = child
        return found

    def client(self, user: str) -> httpx.Client:
        now = int(time.time())
        token = jwt.encode({"sub": user, "iat": now, "exp": now + 600}, JWT_SECRET, "HS256")
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def interrupt(self) -> int:
        """Ctrl-C, to `tunelab dev` alone (a terminal's would reach the services too)."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


@contextmanager
def dev(tmp_path: Path, *args: str, **extra_env: str) -> Iterator[Dev]:
    """`tunelab dev` (with `args`, e.g. --s3), up; killed with everything it started if the
    test fails midway."""
    running = Dev(tmp_path / "var", *args, **extra_env)
    try:
        running.wait_for("tunelab is up")
        yield running
    finally:
        if running.process.poll() is None:
            left = processes.tree(running.pid)
            running.process.kill()
            running.process.wait()
            for pid, _ in left:
                with suppress(OSError):  # gone meanwhile
                    os.kill(pid, signal.SIGKILL)


def test_a_killed_service_is_restarted_the_others_keep_running_and_ctrl_c_stops_all(
    tmp_path: Path,
) -> None:
    with dev(tmp_path, TUNELAB_TRACING_INGEST_WORKERS="2") as suite:
        before = suite.services()
        assert set(before) == set(MODULES)
        tracing = before["tracing"][0]
        workers = processes.tree(tracing)
        assert len(workers) == 3  # two ingest workers and multiprocessing's resource tracker
        os.kill(tracing, signal.SIGKILL)
        crashes = [suite.wait_for(rf"^tracing \(pid {tracing}\) was killed by SIGKILL; .*")]
        assert crashes[0].group(0).endswith("; restarting it in 0.5 s")
        again = int(suite.wait_for(r"^tracing restarted \(pid (\d+)\)$").group(1))
        assert processes.left_after(workers, 2) == set()
        # Crashing again at once, it waits twice as long.
        os.kill(again, signal.SIGKILL)
        crashes.append(suite.wait_for(rf"^tracing \(pid {again}\) was killed by SIGKILL; .*"))
        assert crashes[1].group(0).endswith("; restarting it in 1 s")
        suite.wait_for(r"^tracing restarted \(pid \d+\)$")
        suite.wait_ready()
        after = suite.services()
        assert after["tracing"][0] not in (tracing, again)
        assert {n: p for n, p in after.items() if n != "tracing"} == {
            n: p for n, p in before.items() if n != "tracing"
        }
        everything = processes.tree(suite.pid)
        assert suite.interrupt() == 0
    assert processes.left_after(everything, 2) == set()
    # Ctrl-C ended the services too, and that is no crash to report.
    reported = [line for line in suite.lines if "; restarting it in" in line]
    assert reported == [crash.group(0) for crash in crashes]


def test_a_pod_outlives_a_crashed_deploy_service_but_not_tunelab_dev(tmp_path: Path) -> None:
    with dev(tmp_path, TUNELAB_TRACING_INGEST_WORKERS="0") as suite:
        alice = suite.client("alice")
        dataset_id = upload(alice, "long.jsonl", chat_rows(50))
        created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
        assert created.status_code == 201, created.text
        deployment_id = created.json()["id"]
        wait_until(alice, deployment_id, {"training"})
        record = suite.var / "pods" / f"tunelab-{deployment_id}" / "pod.json"
        pod = processes.process(json.loads(record.read_text())["pid"])
        deploy = suite.services()["deploy"]
        assert processes.parent(pod[0]) == deploy[0]
        os.kill(deploy[0], signal.SIGKILL)
        suite.wait_for(rf"^deploy \(pid {deploy[0]}\) was killed by SIGKILL; restarting")
        # Like a cloud pod, it runs on without its controller; but it is ours now, not init's.
        assert processes.running(pod)
        assert processes.parent(pod[0]) == suite.pid
        suite.wait_for(r"^deploy restarted \(pid \d+\)$")
        suite.wait_ready()
        _trains_on(alice, deployment_id)
        everything = processes.tree(suite.pid)
        assert pod in everything
        assert suite.interrupt() == 0
    assert processes.left_after(everything, 2) == set()


def _trains_on(client: httpx.Client, deployment_id: str, seconds: float = 20) -> None:
    """The restarted deploy service took the run over: its progress moves on."""

    def step() -> int:
        deployment = client.get(f"/v1/deployments/{deployment_id}").json()
        assert deployment["state"] == "training", deployment
        return int(deployment["progress"].get("step", 0))

    first = step()
    deadline = time.monotonic() + seconds
    while step() <= first:
        assert time.monotonic() < deadline, "the run made no progress after the restart"
        time.sleep(0.2)
