"""The process table as the tests see it, read from /proc: who is whose child, what is still
running. A process is named by (pid, start time), so that a reused pid is not mistaken for it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.children import proc_stat

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)

if not Path("/proc/self/stat").exists():
    pytest.skip("these tests read the process table from /proc (Linux)", allow_module_level=True)


def parent(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[1]) if fields else None


def process(pid: int) -> Process:
    fields = proc_stat(pid)
    assert fields is not None, f"no process {pid}"
    return (pid, int(fields[19]))


def running(proc: Process) -> bool:
    """Whether the process runs (a zombie has ended: it only waits to be reaped)."""
    fields = proc_stat(proc[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == proc[1]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def handles(pid: int, sig: int) -> bool:
    """Whether the process has a handler for `sig` (its status's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (sig - 1) & 1)


def children(pid: int) -> list[Process]:
    """The running children of `pid`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        child = int(entry.name)
        fields = proc_stat(child)
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            found.append((child, int(fields[19])))
    return found


def tree(pid: int) -> set[Process]:
    """Every running descendant of `pid`."""
    found: set[Process] = set()
    parents = [pid]
    while parents:
        for child in children(parents.pop()):
            found.add(child)
            parents.append(child[0])
    return found


def left_after(processes: set[Process], seconds: float) -> set[Process]:
    """Those of `processes` still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    left = {p for p in processes if running(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if running(p)}
    return left
