"""The child processes of `tunelab dev`: kept running, and stopped together leaving nothing.

A child that ends unexpectedly is started again after a pause that doubles with each crash
(RESTART_FIRST up to RESTART_CAP) and starts over once a child has stayed up STABLE_AFTER
seconds. Children get SIGTERM when `tunelab dev` dies (see services.common.children).

`tunelab dev` is a child subreaper (Linux): what a crashed child leaves behind, such as the
local training pods of a deploy service killed with -9 (which run in sessions of their own, to
outlive a restart of the service), is reparented to it rather than to init. It reaps those
when they end and, at stop, once its own children have exited, stops every descendant left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common import children

RESTART_FIRST = 0.5
RESTART_CAP = 30.0
STABLE_AFTER = 60.0
STOP_GRACE = 15.0  # for our children to shut down gracefully after SIGTERM
LEFTOVER_GRACE = 5.0  # for what is left of their descendants, after SIGTERM


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_FIRST  # before the next restart
    restart_at: float | None = None  # while it waits to be restarted


class Supervisor:
    """Starts the children, restarts them (`tend`, called every fraction of a second), stops
    them all (`stop`)."""

    def __init__(self, env: dict[str, str], say: Callable[[str], None]) -> None:
        self.env = env
        self.say = say
        self.children: list[Child] = []
        self.stopping = False
        self._me = os.getpid()
        children.become_subreaper()

    def request_stop(self, *_: object) -> None:
        """For signal handlers: `tend` restarts nothing from now on; call `stop` next."""
        self.stopping = True

    def start(self, name: str, argv: list[str]) -> None:
        child = Child(name, argv)
        self.children.append(child)
        self._spawn(child)

    def tend(self) -> None:
        """One round: notice children that ended, restart those whose pause is over, and reap
        the orphans handed to us that ended."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping:  # a child ended by the Ctrl-C that stops us did not crash
                break
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.say(f"{child.name} restarted (pid {self._spawn(child).pid})")
            elif child.process is not None and child.process.poll() is not None:
                self._schedule_restart(child, now)
        _reap_orphans(self._tracked())

    def stop(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL after STOP_GRACE), then every descendant
        they left (SIGTERM, then SIGKILL after LEFTOVER_GRACE)."""
        self.stopping = True
        running = [c.process for c in reversed(self.children) if c.process]
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop_descendants(self._me, LEFTOVER_GRACE)

    def _spawn(self, child: Child) -> subprocess.Popen[bytes]:
        # SIGTERM when we die, which a service takes as "shut down gracefully".
        die_with_us = functools.partial(children.death_signal, signal.SIGTERM, self._me)
        child.process = subprocess.Popen(child.argv, env=self.env, preexec_fn=die_with_us)
        child.started = time.monotonic()
        child.restart_at = None
        return child.process

    def _schedule_restart(self, child: Child, now: float) -> None:
        assert child.process is not None
        if now - child.started >= STABLE_AFTER:
            child.delay = RESTART_FIRST
        child.restart_at = now + child.delay
        self.say(
            f"{child.name} (pid {child.process.pid}) {ended(child.process.returncode)}; "
            f"restarting it in {child.delay:g} s"
        )
        child.delay = min(child.delay * 2, RESTART_CAP)

    def _tracked(self) -> set[int]:
        return {c.process.pid for c in self.children if c.process and c.process.returncode is None}


def ended(returncode: int) -> str:
    """How a child ended, from Popen's returncode."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _reap_orphans(tracked: set[int]) -> None:
    """Reap every ended child of ours but those Popen tracks: it must read their status."""
    if not hasattr(os, "waitid"):  # macOS: no subreaper there, so no orphans come to us
        return
    while True:
        try:
            # WNOWAIT: only look, so that a tracked child's status stays for Popen.
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if found is None or found.si_pid in tracked:
            return  # (a tracked one is reaped by its poll(), and the rest on the next round)
        os.waitpid(found.si_pid, 0)


def stop_descendants(root: int, grace: float) -> None:
    """SIGTERM every live descendant of `root` and their process groups (but root's own), wait
    up to `grace` seconds for them to go, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        left = descendants(root)
        if not left:
            return
        _signal(left, sig, own_group=os.getpgid(root))
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            _reap_orphans(set())
            left = descendants(root)
    _reap_orphans(set())


def descendants(root: int) -> dict[int, int]:
    """The live (not zombie) processes whose chain of parents leads to `root`, with their
    process group; empty where there is no /proc."""
    kids: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    live: set[int] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        fields = children.proc_stat(int(entry.name))
        if fields is not None:
            pid = int(entry.name)
            kids.setdefault(int(fields[1]), []).append(pid)
            groups[pid] = int(fields[2])
            if fields[0] != "Z":
                live.add(pid)
    found: list[int] = []
    parents = [root]
    while parents:
        for pid in kids.get(parents.pop(), []):
            found.append(pid)
            parents.append(pid)
    return {pid: groups[pid] for pid in found if pid in live}


def _signal(processes: dict[int, int], sig: signal.Signals, own_group: int) -> None:
    # Gone meanwhile, or not ours to signal after all: nothing to do either way.
    for group in set(processes.values()) - {own_group}:
        with contextlib.suppress(OSError):
            os.killpg(group, sig)
    for pid in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
