"""Processes that die with their parent, so that a crash leaves nothing running behind it.

Linux's PR_SET_PDEATHSIG has the kernel signal a process as soon as its parent dies, SIGKILL
included. Two catches: the "parent" is the *thread* that started the process (a pool may start
its workers from a thread that ends long before the process does), and only Linux has it. So a
Python child that can run a thread of its own (`die_with_parent`) takes the signal as a hint and
checks, and also watches its parent's pid; a child about to exec another program
(`death_signal`, as a Popen preexec_fn) gets the signal alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# The hint `die_with_parent` asks for: a signal nobody else sends our workers, so that the
# kernel's spurious one (the starting thread ended, the parent lives) can be told apart.
HINT = signal.SIGUSR1
POLL_SECONDS = 0.5

# Looked up at import, so that a forked child (preexec_fn) only calls it.
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def death_signal(sig: int, parent: int) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux only); exit now
    if `parent` is already gone. Usable as a Popen preexec_fn, in the child before exec."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os._exit(1)


def die_with_parent(parent: int) -> None:
    """Exit as soon as `parent` (a pid) is no longer this process's parent: at once on Linux,
    within POLL_SECONDS elsewhere. Call it from the main thread; it takes over HINT's handler."""
    signal.signal(HINT, lambda *_: _exit_if_orphaned(parent))
    death_signal(HINT, parent)
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


def become_subreaper() -> bool:
    """Have the orphans of our descendants reparented to us rather than to init (Linux), so
    that we can stop them; False where that is not possible."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and brackets):
    [0] state, [1] parent, [2] process group, [19] start time; None where there is no such
    process, or no /proc (macOS)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _watch(parent: int) -> None:
    while True:
        _exit_if_orphaned(parent)
        time.sleep(POLL_SECONDS)


def _exit_if_orphaned(parent: int) -> None:
    # Once the parent is gone, the process was handed to init or a subreaper: getppid changes.
    if os.getppid() != parent:
        os._exit(1)
