"""The suite as real processes: the datasets service and the gateway, on each backend.

The processes are started the way `make run` starts them (`python -m ...` with environment
settings, migrations first); their logs go to files the tests read back, to prove that no
credential ever reaches a log line.

Storage is paired with the database, so that each module's two suites cover both blob
backends at no extra cost: the PostgreSQL suite keeps datasets and outputs in S3 (the session's
SeaweedFS, tests/s3_fixtures.py, under prefixes of the suite's own: the production pairing), the
SQLite suite in local directories under its var/ (the embedded default, `make run`'s). A test
that looks at stored bytes does it through the Suite's helpers (blobs, unfinished_uploads,
blob_taken_away), which work on both; `Suite.storage`, the local directory itself, is for tests
of local storage only. The gateway gets an environment of its own with no storage settings at
all (no directory, no bucket, no credentials): it never touches stored bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from services.deploy.providers.local import LocalProvider
from tests.conftest import PgDatabases
from tests.s3_fixtures import S3_TEST_BUCKET, multipart_uploads, s3_call

if TYPE_CHECKING:
    from tunelab_cli.seaweed import SeaweedFS

JWT_SECRET = "e2e-jwt-secret-" + secrets.token_hex(16)
KEK = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
EVAL_KEK = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
MAX_UPLOAD = 8 * 1024 * 1024
MAX_LINE = 256 * 1024


#: TUNELAB_E2E_TARGET=containers: the tests marked `containers` run against the suite `make up`
#: started (make test-containers); the others, which start, kill or read the processes
#: themselves, are skipped.
TARGET = os.environ.get("TUNELAB_E2E_TARGET", "processes")
SUITES = ["containers"] if TARGET == "containers" else ["sqlite", "postgresql"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TARGET != "containers":
        return
    skip = pytest.mark.skip(
        reason="TUNELAB_E2E_TARGET=containers: this test drives the suite's own processes"
    )
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("containers"):
            item.add_marker(skip)


def containers_suite() -> Suite:
    from tests.e2e.containers import ContainerSuite  # it builds on Suite, defined below

    return ContainerSuite.running()


MODULES = {
    "datasets": "services.datasets",
    "deploy": "services.deploy",
    "tracing": "services.tracing",
    "eval": "services.eval",
    "gateway": "gateway",
}


# Each storing service: its local directory's variable, and its S3 prefix's.
STORES = {
    "datasets": ("TUNELAB_DATASETS_STORAGE_DIR", "TUNELAB_DATASETS_S3_PREFIX"),
    "deploy": ("TUNELAB_DEPLOY_OUTPUT_DIR", "TUNELAB_DEPLOY_S3_PREFIX"),
}


def process_group(group: int, proc: Path = Path("/proc")) -> list[int]:
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], seconds: float = 30, what: str = "") -> Any:
    """Poll `check` until it gives something true, and return that; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what or check}"
        time.sleep(0.05)
    return found


def storage_setting(name: str) -> bool:
    """Whether an environment variable configures storage: a directory, a bucket, the blob
    listener, credentials. The gateway gets none of them."""
    return (
        "_STORAGE" in name
        or "_S3_" in name
        or name.startswith("AWS_")
        or name in ("TUNELAB_DEPLOY_OUTPUT_DIR", "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS")
    )


def gateway_environment(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if not storage_setting(name)}


def s3_environment(server: SeaweedFS) -> dict[str, str]:
    """The services' bytes in the server's test bucket, under prefixes of this suite's own
    (storage_env's datasets/ and outputs/ would be shared by every suite of the session)."""
    root = f"e2e/{uuid.uuid4().hex}/"
    return {
        **server.storage_env(S3_TEST_BUCKET),
        "TUNELAB_DATASETS_S3_PREFIX": f"{root}datasets/",
        "TUNELAB_DEPLOY_S3_PREFIX": f"{root}outputs/",
        # The server's credentials only: none of a developer's AWS setup.
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }


@dataclass
class Suite:
    url: str
    env: dict[str, str]  # the services'
    var: Path
    database_url: str
    processes: dict[str, subprocess.Popen[bytes]]
    secrets_seen: set[str] = field(default_factory=set)
    #: The S3 server the services store in; None for local storage.
    s3: SeaweedFS | None = None
    #: The key the gateway checks tokens with.
    jwt_secret: str = JWT_SECRET

    def token(self, user: str, ttl: int = 600, **claims: object) -> str:
        now = int(time.time())
        value = jwt.encode(
            {"sub": user, "iat": now, "exp": now + ttl, **claims},
            self.jwt_secret,
            algorithm="HS256",
        )
        self.secrets_seen.add(value)
        return value

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def remember(self, secret: str) -> str:
        self.secrets_seen.add(secret)
        return secret

    @property
    def storage(self) -> Path:
        """The datasets service's local storage directory (tests of local storage only)."""
        assert self.s3 is None, "this suite stores in S3: use blobs() or unfinished_uploads()"
        return self.var / "datasets"

    @property
    def storage_kind(self) -> str:
        return "local" if self.s3 is None else "s3"

    @property
    def gateway_env(self) -> dict[str, str]:
        return gateway_environment(self.env)

    def env_for(self, name: str) -> dict[str, str]:
        return self.gateway_env if name == "gateway" else self.env

    def _local(self, service: str) -> Path:
        return Path(self.env[STORES[service][0]])

    def _prefix(self, service: str) -> str:
        return self.env[STORES[service][1]]

    def _s3_call(self, operation: str, **params: Any) -> Any:
        assert self.s3 is not None
        return s3_call(self.s3, operation, **params)

    def blobs(self, service: str = "datasets") -> list[str]:
        """The names of the finished blobs `service` ("datasets" or "deploy") stores: files
        under its directory's objects/, or objects under its S3 prefix."""
        if self.s3 is None:
            objects = self._local(service) / "objects"
            return sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())
        listed = self._s3_call("list_objects_v2", Prefix=self._prefix(service))
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def blob_bytes(self, name: str, service: str = "datasets") -> bytes:
        if self.s3 is None:
            return (self._local(service) / "objects" / name).read_bytes()
        body = self._s3_call("get_object", Key=name)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def unfinished_uploads(self, service: str = "datasets") -> list[str]:
        """What unfinished uploads left: partial files in incoming/, or multipart uploads."""
        if self.s3 is None:
            return sorted(p.name for p in (self._local(service) / "incoming").iterdir())
        return multipart_uploads(self.s3, self._prefix(service))

    @contextlib.contextmanager
    def blob_taken_away(self, name: str, service: str = "datasets") -> Iterator[None]:
        """The blob is gone from storage (an operator's mistake, a lost disk) until the block
        ends, then it is put back as it was."""
        content = self.blob_bytes(name, service)
        if self.s3 is None:
            path = self._local(service) / "objects" / name
            aside = self.var / f"aside-{uuid.uuid4().hex}"
            path.rename(aside)
            try:
                yield
            finally:
                aside.rename(path)
            return
        self._s3_call("delete_object", Key=name)
        try:
            yield
        finally:
            self._s3_call("put_object", Key=name, Body=content)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.var.glob("*.log")))

    def process_group(self, group: int) -> list[int]:
        """The live (not zombie) members of a process group: a local pod's processes."""
        return process_group(group)

    def kill(self, name: str) -> int:
        """SIGKILL one process (a crash, an OOM kill) and reap it; its pid."""
        process = self.processes[name]
        process.kill()
        process.wait(timeout=10)
        return process.pid

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start a killed process again (appending to its log); with `wait`, return once the
        gateway reports every service ready."""
        self.processes[name] = _spawn(self.var, name, MODULES[name], self.env_for(name))
        if wait and not ready_within(self.url, 30):
            raise AssertionError(f"{name} did not come back:\n{self.logs()[-3000:]}")

    def restart(self, name: str, module: str) -> None:
        """Stop one process (SIGTERM, as Kubernetes does) and start it again, appending to its
        log; returns once the gateway reports every service ready again."""
        old = self.processes[name]
        old.terminate()
        old.wait(timeout=30)
        self.processes[name] = _spawn(self.var, name, module, self.env_for(name))
        if not ready_within(self.url, 30):
            raise AssertionError(f"{name} did not come back:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        """Stop the processes, then the local pods they left: a pod outlives its deploy
        service on purpose (a restarted one adopts it), but not the test."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        pods = LocalProvider(self.var / "pods", python=sys.executable, kill_grace_seconds=2)
        for pod in asyncio.run(pods.list_pods("")):
            asyncio.run(pods.terminate(pod.id))


def start_suite(
    var: Path,
    database_url: str,
    deploy_database_url: str,
    tracing_database_url: str,
    eval_database_url: str,
    *,
    s3: SeaweedFS | None = None,
    **extra_env: str,
) -> Suite:
    """The suite on these databases, its bytes in local directories under `var`, or in S3 on
    `s3` when given."""
    gateway_port = free_port()
    grpc_address = f"127.0.0.1:{free_port()}"
    deploy_address = f"127.0.0.1:{free_port()}"
    tracing_address = f"127.0.0.1:{free_port()}"
    eval_address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "TUNELAB_INTERNAL_TOKEN": "e2e-internal-" + secrets.token_hex(24),
        "TUNELAB_JWT_SECRET": JWT_SECRET,
        "TUNELAB_PUBLIC_URL": f"http://127.0.0.1:{gateway_port}",
        "TUNELAB_LOG_FORMAT": "json",
        "TUNELAB_LOG_LEVEL": "DEBUG",
        "TUNELAB_DATASETS_DATABASE_URL": database_url,
        "TUNELAB_DATASETS_STORAGE_DIR": str(var / "datasets"),
        "TUNELAB_DATASETS_GRPC_ADDRESS": grpc_address,
        "TUNELAB_DATASETS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        # Where the datasets service serves the gateway its signed blob URLs.
        "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_DATASETS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "TUNELAB_DATASETS_MAX_LINE_BYTES": str(MAX_LINE),
        "TUNELAB_GATEWAY_PORT": str(gateway_port),
        "TUNELAB_GATEWAY_DATASETS_ADDRESS": grpc_address,
        "TUNELAB_DEPLOY_DATABASE_URL": deploy_database_url,
        "TUNELAB_DEPLOY_GRPC_ADDRESS": deploy_address,
        "TUNELAB_DEPLOY_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_DEPLOY_KEYS_KEK": KEK,
        "TUNELAB_DEPLOY_LOCAL_WORK_DIR": str(var / "pods"),
        "TUNELAB_DEPLOY_OUTPUT_DIR": str(var / "outputs"),
        "TUNELAB_DEPLOY_SUPERVISE_INTERVAL_SECONDS": "0.5",
        "TUNELAB_DEPLOY_ORPHAN_SWEEP_INTERVAL_SECONDS": "2",
        "TUNELAB_DEPLOY_HEARTBEAT_SECONDS": "2",
        "TUNELAB_DEPLOY_LOCAL_KILL_GRACE_SECONDS": "2",
        "TUNELAB_GATEWAY_DEPLOY_ADDRESS": deploy_address,
        "TUNELAB_TRACING_DATABASE_URL": tracing_database_url,
        "TUNELAB_TRACING_GRPC_ADDRESS": tracing_address,
        "TUNELAB_TRACING_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        # One worker process, not one per CPU: every test starts a suite.
        "TUNELAB_TRACING_INGEST_WORKERS": "1",
        "TUNELAB_EVAL_DATABASE_URL": eval_database_url,
        "TUNELAB_EVAL_GRPC_ADDRESS": eval_address,
        "TUNELAB_EVAL_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_EVAL_KEYS_KEK": EVAL_KEK,
        # Rules find new spans within a second; the tracing feed holds back the last second.
        "TUNELAB_EVAL_FOLLOW_INTERVAL_SECONDS": "0.5",
        "TUNELAB_TRACING_FOLLOW_SETTLE_SECONDS": "1",
        # The tests are one client making many requests, refused ones too, from one address:
        # the abuse limits are turned down only where they are the subject (test_limits.py).
        "TUNELAB_GATEWAY_PUBLIC_RATE_LIMIT": "1000000/minute",
        "TUNELAB_GATEWAY_PUBLIC_REFUSED_RATE_LIMIT": "1000000/minute",
        "TUNELAB_GATEWAY_USER_RATE_LIMIT": "1000000/minute",
        "TUNELAB_GATEWAY_MAX_STREAMS_PER_USER": "1000",
        **(s3_environment(s3) if s3 is not None else {}),
        **extra_env,
    }
    for service in ("services.datasets", "services.deploy", "services.tracing", "services.eval"):
        migrate = subprocess.run(
            [sys.executable, "-m", service, "migrate", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stderr
    processes = {
        name: _spawn(var, name, module, gateway_environment(env) if name == "gateway" else env)
        for name, module in MODULES.items()
    }
    suite = Suite(f"http://127.0.0.1:{gateway_port}", env, var, database_url, processes, s3=s3)
    suite.secrets_seen |= {env["TUNELAB_INTERNAL_TOKEN"], JWT_SECRET, KEK, EVAL_KEK}
    if s3 is not None:
        suite.secrets_seen.add(s3.secret_key)
    if ready_within(suite.url, 60, processes.values()):
        return suite
    # Which exited by itself, and what /readyz said, before stop() ends them all.
    exited = [name for name, process in processes.items() if process.poll() is not None]
    try:
        said = httpx.get(f"{suite.url}/readyz", timeout=2).text
    except httpx.HTTPError as exc:
        said = repr(exc)
    suite.stop()
    raise AssertionError(
        f"not ready (exited: {exited}; /readyz: {said[:500]}):\n{suite.logs()[-3000:]}"
    )


def ready_within(url: str, seconds: float, watched: Iterable[subprocess.Popen[bytes]] = ()) -> bool:
    """Whether the gateway at `url` reports every service ready within `seconds`; False at
    once when one of the `watched` processes exits meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in watched):
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _spawn(var: Path, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (var / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT
        )


@contextlib.contextmanager
def suite_on(
    backend: str, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases, **extra_env: str
) -> Iterator[Suite]:
    """A whole suite on `backend` ("sqlite" or "postgresql"), its bytes on local storage,
    stopped afterwards."""
    with _suite(backend, tmp_path_factory, pg, None, extra_env) as running:
        yield running


@contextlib.contextmanager
def suite_on_s3(
    s3: SeaweedFS,
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgDatabases,
    **extra_env: str,
) -> Iterator[Suite]:
    """A whole suite on `backend`, its bytes in S3 on `s3`, stopped afterwards."""
    with _suite(backend, tmp_path_factory, pg, s3, extra_env) as running:
        yield running


@contextlib.contextmanager
def _suite(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgDatabases,
    s3: SeaweedFS | None,
    extra_env: dict[str, str],
) -> Iterator[Suite]:
    var = tmp_path_factory.mktemp(f"var-{backend}")
    if backend == "postgresql":
        urls = [pg.fresh(None) for _ in range(4)]
    else:
        names = ("datasets", "deploy", "tracing", "eval")
        urls = [f"sqlite:///{var / name}.db" for name in names]
    running = start_suite(var, *urls, s3=s3, **extra_env)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(var / "datasets", ignore_errors=True)


@pytest.fixture(scope="module", params=SUITES)
def suite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Suite]:
    """The suite on each database, paired with a storage backend (paired_suite); or the one
    `make up` runs in containers (TUNELAB_E2E_TARGET=containers)."""
    if request.param == "containers":
        yield containers_suite()
        return
    with paired_suite(request, tmp_path_factory, request.getfixturevalue("pg")) as running:
        yield running


@contextlib.contextmanager
def paired_suite(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgDatabases,
    **extra_env: str,
) -> Iterator[Suite]:
    """For a fixture parametrized over the databases: the suite on SQLite with local storage,
    on PostgreSQL with S3 (see the module's docstring)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("s3_server")
        with suite_on_s3(server, "postgresql", tmp_path_factory, pg, **extra_env) as running:
            yield running
    else:
        with suite_on(request.param, tmp_path_factory, pg, **extra_env) as running:
            yield running


def needs(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; the end-to-end tests drive it")
    return path
