"""Nothing outlives what started it: a service killed with -9 takes its worker processes (and
multiprocessing's resource tracker) with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.common import children
from tests.conftest import INTERNAL_TOKEN
from tests.e2e import processes
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def test_a_killed_tracing_service_takes_its_workers_and_resource_tracker_along(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "TUNELAB_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "TUNELAB_TRACING_DATABASE_URL": f"sqlite:///{tmp_path / 'tracing.db'}",
        "TUNELAB_TRACING_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_TRACING_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_TRACING_INGEST_WORKERS": "2",
    }
    tracing = [sys.executable, "-m", "services.tracing"]
    subprocess.run([*tracing, "migrate", "upgrade"], env=env, check=True, capture_output=True)
    with (tmp_path / "tracing.log").open("wb") as log:
        service = subprocess.Popen(tracing, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        helpers = _workers_and_tracker(service.pid)
        service.kill()
        assert service.wait(timeout=10) == -signal.SIGKILL
        started = time.monotonic()
        assert processes.left_after(helpers, 2) == set()
        print(f"workers and tracker gone {time.monotonic() - started:.3f} s after the kill")
    finally:
        if service.poll() is None:
            service.kill()


def _workers_and_tracker(service: int) -> set[processes.Process]:
    """The service's two ingest workers and the resource tracker, once all three run and the
    workers watch their parent."""
    deadline = time.monotonic() + 30
    while True:
        found = {p: processes.command(p[0]) for p in processes.children(service)}
        workers = [
            p
            for p, cmd in found.items()
            if "multiprocessing.spawn" in cmd and processes.handles(p[0], children.HINT)
        ]
        trackers = [p for p, cmd in found.items() if "resource_tracker" in cmd]
        if len(workers) == 2 and len(trackers) == 1:
            return {*workers, *trackers}
        assert time.monotonic() < deadline, f"no workers and tracker yet: {found}"
        time.sleep(0.1)


# A parent that starts a child from a thread which then ends, as a pool may.
_PARENT = """
import subprocess, sys, threading, time

def start():
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"watching\\n"
    print(child.pid, flush=True)

thread = threading.Thread(target=start)
thread.start()
thread.join()
time.sleep(60)
"""
_CHILD = """
import os, time
from services.common import children
children.die_with_parent(os.getppid())
print("watching", flush=True)
time.sleep(60)
"""


def test_a_child_outlives_the_thread_that_started_it_but_not_its_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), textwrap.dedent(_CHILD)],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        child = processes.process(int(parent.stdout.readline()))
        # The kernel's death signal came when the thread ended; the child checked and stayed.
        time.sleep(1)
        assert processes.running(child)
        assert processes.parent(child[0]) == parent.pid
        parent.kill()
        parent.wait(timeout=10)
        assert processes.left_after({child}, 2) == set()
    finally:
        if parent.poll() is None:
            parent.kill()
