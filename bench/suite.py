"""The processes under test: `tunelab dev` on free ports in a scratch var dir, and nginx; and
what the benchmarks share (BenchError, free ports, RSS, concurrent callers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import jwt


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


T = TypeVar("T")


async def callers(items: Iterable[T], count: int, work: Callable[[T], Awaitable[None]]) -> None:
    """`work` on each item, from `count` callers at once. After a failure no caller takes
    another item and the calls in flight finish (cancelling them would cancel an in-process
    service's handlers mid-transaction); then the first error is raised."""
    queue = iter(items)
    failed: list[Exception] = []

    async def caller() -> None:
        for item in queue:
            if failed:
                return
            try:
                await work(item)
            except Exception as exc:
                failed.append(exc)
                return

    await asyncio.gather(*(caller() for _ in range(count)))
    if failed:
        raise failed[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Signal the process (and, failing that, its whole session) and reap it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Started with start_new_session, so the group id is the pid: this reaches any orphans.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for pid {pid}")


def _rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _descendants(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):  # it ended meanwhile
        for child in _children(pid):
            found += [child, *_descendants(child)]
    return found


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class Suite:
    """`tunelab dev` with everything under `root`; its output goes to `root/suite.log`."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        """`env`: settings of the run's own, over the defaults below."""
        self.root = root
        self.extra_env = env or {}
        self.var = root / "var"
        self.storage = self.var / "datasets"
        self.log_path = root / "suite.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _env(self) -> dict[str, str]:
        grpc = f"127.0.0.1:{free_port()}"
        # Drop any TUNELAB_* of the caller's (a developer's own secrets, ports, var dir).
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
        return (
            env
            | {
                "TUNELAB_VAR_DIR": str(self.var),
                "TUNELAB_DATASETS_DATABASE_URL": f"sqlite:///{self.var}/datasets.db",
                "TUNELAB_DATASETS_STORAGE_DIR": str(self.storage),
                "TUNELAB_GATEWAY_PORT": str(self.port),
                "TUNELAB_DATASETS_GRPC_ADDRESS": grpc,
                "TUNELAB_GATEWAY_DATASETS_ADDRESS": grpc,
                "TUNELAB_DATASETS_METRICS_ADDRESS": "",
                "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "TUNELAB_DEPLOY_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
                "TUNELAB_DEPLOY_METRICS_ADDRESS": "",
                "TUNELAB_TRACING_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
                "TUNELAB_TRACING_METRICS_ADDRESS": "",
                "TUNELAB_PUBLIC_URL": self.url,
                "TUNELAB_LOG_LEVEL": "WARNING",
            }
            | self.extra_env
        )

    def start(self, timeout: float = 60.0) -> None:
        tunelab = Path(sys.executable).with_name("tunelab")
        if not tunelab.exists():
            raise BenchError(f"{tunelab} is missing: run `make setup` first")
        self.var.mkdir(parents=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [str(tunelab), "dev"],
            cwd=self.root,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"tunelab dev exited ({self._process.returncode}):\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"the gateway was not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process, signal.SIGTERM, 30)
        if self._log is not None:
            self._log.close()

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def token(self, ttl_seconds: int = 3600, user: str = "bench") -> str:
        secret = (self.var / "secrets" / "jwt-secret").read_text().strip()
        now = int(time.time())
        claims = {"sub": user, "iat": now, "exp": now + ttl_seconds, "iss": "tunelab-dev"}
        return jwt.encode(claims, secret, algorithm="HS256")

    def blobs(self) -> set[Path]:
        objects = self.storage / "objects"
        return {path for path in objects.glob("*/*") if path.is_file()}

    def rss_mib(self) -> dict[str, float]:
        """Resident memory now of the gateway and each service, its own child processes (the
        tracing service's ingest workers) counted with it."""
        assert self._process is not None
        found: dict[str, float] = {}
        for child in _children(self._process.pid):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            if "-m" in argv:
                module = argv[argv.index("-m") + 1].removeprefix("services.")
                found[module] = sum(_rss_mib(pid) for pid in [child, *_descendants(child)])
        return dict(sorted(found.items()))

    def peak_rss_mib(self) -> dict[str, float]:
        """Peak RSS of the gateway and of each service, found among tunelab dev's children."""
        assert self._process is not None
        found: dict[str, float] = {}
        for child in _children(self._process.pid):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            if "-m" in argv:
                module = argv[argv.index("-m") + 1]
                found[module.removeprefix("services.")] = peak_rss_mib(child)
        return dict(sorted(found.items(), key=lambda item: item[0] != "gateway"))


def nginx_binary() -> str:
    """nginx's path, installing the Debian package first if it is not there."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    apt = shutil.which("apt-get")
    if apt is None:
        raise BenchError("nginx is not installed and there is no apt-get to install it")
    print("nginx is missing; installing it with apt-get ...", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    attempts = [["install", "-y", "nginx-light"], ["install", "-y", "nginx"]]
    for args in [*attempts, ["update"], *attempts]:
        subprocess.run([apt, "-q", *args], env=env, stdout=subprocess.DEVNULL, check=False)
        if os.access("/usr/sbin/nginx", os.X_OK):
            return "/usr/sbin/nginx"
    raise BenchError("cannot install nginx (apt-get install nginx-light failed): install it")


class Nginx:
    """nginx in the foreground: GET /files/<name> from `files`, PUT /upload/<name> to disk."""

    def __init__(self, root: Path, files: Path) -> None:
        self.root = root
        self.files = files
        self.dav = root / "dav"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        temp = self.root / "temp"
        # Every temp path is set, so that nginx never touches /var/lib/nginx. The blob store's
        # directories are owner-only, so the worker must run as the same user as we do.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_max_body_size 0;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location /files/ {{ alias {self.files}/; }}
        location /upload/ {{
            root {self.dav};
            dav_methods PUT;
            create_full_put_path on;
            client_body_in_file_only off;
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> None:
        binary = nginx_binary()
        self.dav.mkdir(parents=True)
        (self.root / "temp").mkdir()
        conf = self.root / "nginx.conf"
        conf.write_text(self._config())
        errors = self.root / "error.log"
        self._process = subprocess.Popen(
            [binary, "-c", str(conf), "-e", str(errors)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = errors.read_text(errors="replace") if errors.exists() else ""
                raise BenchError(f"nginx exited ({self._process.returncode}):\n{log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise BenchError(f"nginx did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process, signal.SIGQUIT, 10)


def run_and_report(
    name: str,
    work: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]],
    table: Callable[[dict[str, Any]], str],
    results_file: Path,
) -> int:
    """Run a benchmark in a temporary directory (SIGTERM ends it as Ctrl-C does, cleaned up),
    print its table and keep its figures as JSON; the exit status. The figures are stamped with
    the machine (when, CPUs, load average at the start) and the seconds the whole run took."""
    signal.signal(signal.SIGTERM, _interrupt)
    machine = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"tunelab-{name.replace(' ', '-')}-") as tmp:
            results = machine | asyncio.run(work(Path(tmp)))
        results["seconds"] = round(time.perf_counter() - started, 1)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; cleaned up", file=sys.stderr)
        return 130
    print(table(results))
    results_file.parent.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(figures in {results_file})")
    return 0


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt
