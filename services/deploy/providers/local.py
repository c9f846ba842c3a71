"""The local provider: a "pod" is a process group on this machine, running the same command
with the same environment a RunPod pod would get, in a scratch directory of its own.

State lives on disk (var/pods/<name>/pod.json, exit_code, terminated), not in memory, so the
deploy service can restart and still find, watch and terminate the pods it started. A pod gets
none of the service's environment (its internal token, its key-encryption key): only a minimal
PATH and locale, and the pod's own variables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.common.children import proc_stat
from services.deploy.providers.base import (
    Cloud,
    GpuType,
    Pod,
    PodSpec,
    PodStatus,
    ProviderError,
    ProviderErrorKind,
)

log = logging.getLogger(__name__)

_BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
# Runs the pod's command and records its exit status; it is the process group's leader.
_WRAPPER = '"$@"; code=$?; printf "%s\\n" "$code" > "$TUNELAB_POD_DIR/exit_code"; exit "$code"'


@dataclass(frozen=True)
class _Record:
    pid: int
    start_ticks: int  # /proc/<pid>/stat's starttime: tells our process from a reused pid


class LocalProvider:
    name = "local"

    def __init__(self, work_dir: Path, *, python: str, kill_grace_seconds: float = 5.0) -> None:
        self.work_dir = work_dir.resolve()
        self.python = python
        self.kill_grace_seconds = kill_grace_seconds
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    async def create(self, spec: PodSpec) -> Pod:
        pod_dir = self._dir(spec.name)
        if (pod_dir / "pod.json").exists():
            existing = await self.get(spec.name)
            if existing is not None:
                return existing
        return await asyncio.to_thread(self._spawn, spec, pod_dir)

    def _spawn(self, spec: PodSpec, pod_dir: Path) -> Pod:
        pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {name: os.environ[name] for name in _BASE_ENV if name in os.environ}
        env.update(spec.env)
        env.update(
            HOME=str(pod_dir),
            TUNELAB_POD_DIR=str(pod_dir),
            TUNELAB_WORK_DIR=str(pod_dir / "work"),
            TUNELAB_PYTHON=self.python,
        )
        with open(pod_dir / "pod.log", "ab") as output:
            try:
                child = subprocess.Popen(
                    ["sh", "-c", _WRAPPER, "pod", *spec.command],
                    cwd=pod_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProviderError(
                    ProviderErrorKind.UNAVAILABLE, f"could not start the local pod: {exc.strerror}"
                ) from None
        self._children[spec.name] = child
        record = {"pid": child.pid, "start_ticks": _start_ticks(child.pid)}
        (pod_dir / "pod.json").write_text(json.dumps(record))
        log.info("local pod started", extra={"pod": spec.name, "pid": child.pid})
        return Pod(id=spec.name, name=spec.name, status=PodStatus.RUNNING)

    async def get(self, pod_id: str) -> Pod | None:
        return await asyncio.to_thread(self._status, pod_id)

    def _status(self, pod_id: str) -> Pod | None:
        pod_dir = self._dir(pod_id)
        record = _read_record(pod_dir)
        if record is None:
            return None
        if (pod_dir / "terminated").exists():
            return Pod(id=pod_id, name=pod_id, status=PodStatus.TERMINATED)
        child = self._children.get(pod_id)
        if child is not None:
            child.poll()  # reap it, so that an exited child is not a zombie that looks alive
        if _alive(record):
            return Pod(id=pod_id, name=pod_id, status=PodStatus.RUNNING)
        code = _exit_code(pod_dir)
        if code is None:
            return Pod(
                id=pod_id,
                name=pod_id,
                status=PodStatus.FAILED,
                message="the pod's process ended without an exit status (killed)",
            )
        return Pod(id=pod_id, name=pod_id, status=PodStatus.EXITED, exit_code=code)

    async def list_pods(self, name_prefix: str) -> list[Pod]:
        if not self.work_dir.is_dir():
            return []
        pods = []
        for entry in sorted(self.work_dir.iterdir()):
            if entry.name.startswith(name_prefix):
                pod = await self.get(entry.name)
                if pod is not None and pod.status is not PodStatus.TERMINATED:
                    pods.append(pod)
        return pods

    async def terminate(self, pod_id: str) -> None:
        pod_dir = self._dir(pod_id)
        record = _read_record(pod_dir)
        if record is None:
            return
        if _alive(record):
            _signal_group(record.pid, signal.SIGTERM)
            deadline = asyncio.get_running_loop().time() + self.kill_grace_seconds
            while _alive(record) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
                self._reap(pod_id)
            if _alive(record):
                _signal_group(record.pid, signal.SIGKILL)
        # Whatever is left of the group (a heartbeat loop that outlived its script) goes too.
        _signal_group(record.pid, signal.SIGKILL)
        self._reap(pod_id)
        await asyncio.to_thread(self._release, pod_dir)
        log.info("local pod terminated", extra={"pod": pod_id})

    def _reap(self, pod_id: str) -> None:
        child = self._children.get(pod_id)
        if child is not None and child.poll() is not None:
            self._children.pop(pod_id, None)

    def _release(self, pod_dir: Path) -> None:
        (pod_dir / "terminated").touch()
        # The dataset copy goes with the pod; the logs and the trained model (work/output)
        # stay, for whoever wants them.
        (pod_dir / "work" / "dataset.jsonl").unlink(missing_ok=True)

    async def gpu_types(self, count: int = 1, cloud: Cloud = "secure") -> list[GpuType]:
        return []

    async def billed_usd(self, pod_id: str, since: datetime) -> float | None:
        return None  # a local pod costs nothing

    async def log_tail(self, pod_id: str, lines: int) -> list[str]:
        return await asyncio.to_thread(_tail, self._dir(pod_id) / "pod.log", lines)

    async def aclose(self) -> None:
        return None

    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ProviderError(ProviderErrorKind.INVALID, f"bad local pod name {name!r}")
        return self.work_dir / name


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a file, reading only its end."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 64 * 1024))
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def _read_record(pod_dir: Path) -> _Record | None:
    try:
        data = json.loads((pod_dir / "pod.json").read_text())
        return _Record(int(data["pid"]), int(data["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_ticks(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else 0


def _alive(record: _Record) -> bool:
    fields = proc_stat(record.pid)
    if fields is not None:
        return fields[0] != "Z" and int(fields[19]) == record.start_ticks
    if Path("/proc/self/stat").exists():
        return False  # Linux: the process is gone
    try:  # no /proc: ask the kernel; a reaped child is gone, a zombie is reaped by poll()
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_code(pod_dir: Path) -> int | None:
    try:
        return int((pod_dir / "exit_code").read_text().strip())
    except (OSError, ValueError):
        return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal the local pod", extra={"pid": pid})
