"""`tunelab dev` (what `make run` runs): the whole suite on this machine, in the foreground.

Creates the development secrets under var/secrets on first use, migrates every service's
SQLite database under var/, starts the services and then the gateway, restarts any of them that
crashes (supervise.py: with a growing pause, saying why), and stops them all on Ctrl-C or
SIGTERM, leaving no process of theirs behind.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tunelab_cli.supervise import Supervisor

# (name, module) of each service, in start order; the gateway comes last.
SERVICES = [
    ("datasets", "services.datasets"),
    ("deploy", "services.deploy"),
    ("tracing", "services.tracing"),
    ("eval", "services.eval"),
]
SECRETS = {
    "internal-token": "TUNELAB_INTERNAL_TOKEN",
    "jwt-secret": "TUNELAB_JWT_SECRET",
    "deploy-kek": "TUNELAB_DEPLOY_KEYS_KEK",
    "eval-kek": "TUNELAB_EVAL_KEYS_KEK",
}
S3_BUCKET = "tunelab"
# The addresses the suite listens on: (variable, default).
LISTENS = [
    ("TUNELAB_DATASETS_GRPC_ADDRESS", "127.0.0.1:50051"),
    ("TUNELAB_DATASETS_METRICS_ADDRESS", "127.0.0.1:9151"),
    ("TUNELAB_DATASETS_BLOB_HTTP_ADDRESS", "127.0.0.1:50061"),
    ("TUNELAB_DEPLOY_GRPC_ADDRESS", "127.0.0.1:50052"),
    ("TUNELAB_DEPLOY_METRICS_ADDRESS", "127.0.0.1:9152"),
    ("TUNELAB_TRACING_GRPC_ADDRESS", "127.0.0.1:50053"),
    ("TUNELAB_TRACING_METRICS_ADDRESS", "127.0.0.1:9153"),
    ("TUNELAB_EVAL_GRPC_ADDRESS", "127.0.0.1:50054"),
    ("TUNELAB_EVAL_METRICS_ADDRESS", "127.0.0.1:9154"),
]


def var_dir() -> Path:
    return Path(os.environ.get("TUNELAB_VAR_DIR", "var"))


def dev_secret(name: str) -> str | None:
    """A development secret from the environment or var/secrets, if there is one."""
    if value := os.environ.get(SECRETS[name]):
        return value
    path = var_dir() / "secrets" / name
    return path.read_text().strip() if path.exists() else None


def ensure_secrets() -> dict[str, str]:
    directory = var_dir() / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {}
    for name, variable in SECRETS.items():
        value = dev_secret(name)
        if value is None:
            # The key-encryption key must be a Fernet key: 32 random bytes, url-safe base64.
            value = (
                base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
                if name.endswith("-kek")
                else secrets.token_urlsafe(48)
            )
            path = directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
        env[variable] = value
    return env


def run(*, log_format: str = "text", s3: bool = False) -> int:
    env = _environment(log_format)
    gateway = (
        f"{env.get('TUNELAB_GATEWAY_HOST', '127.0.0.1')}:{env.get('TUNELAB_GATEWAY_PORT', '8080')}"
    )
    if not _ports_free(env, gateway) or not _migrate(env):
        return 1
    say = functools.partial(print, flush=True)
    seaweed = None
    if s3:
        from tunelab_cli.seaweed import SeaweedFS  # botocore: only for --s3

        say("starting SeaweedFS (S3) ...")
        seaweed = SeaweedFS(var_dir() / "seaweedfs")
        try:
            seaweed.start()
            seaweed.create_bucket(S3_BUCKET)
        except RuntimeError as exc:
            seaweed.stop()
            say(f"SeaweedFS did not start: {exc}")
            return 1
        env |= seaweed.storage_env(S3_BUCKET)
        say(f"S3: {seaweed.endpoint_url}, bucket {S3_BUCKET} (datasets/, outputs/)")
    supervisor = Supervisor(env, say)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    try:
        for name, module in [*SERVICES, ("gateway", "gateway")]:
            supervisor.start(name, [sys.executable, "-m", module])
        url = f"http://{gateway}"
        announced = False
        while not supervisor.stopping:
            supervisor.tend()
            if not announced and _ready(url):
                announced = True
                say(
                    f"\ntunelab is up: {url} (OpenAPI: {url}/openapi.json)\n"
                    "  get a token:  .venv/bin/tunelab token --user alice\n"
                    "  upload:       .venv/bin/tunelab datasets upload FILE.jsonl\n"
                    "Ctrl-C stops everything.\n"
                )
            time.sleep(0.2)
        return 0
    finally:
        supervisor.stop()
        if seaweed is not None:
            seaweed.stop()


def _environment(log_format: str) -> dict[str, str]:
    env = {**os.environ, **ensure_secrets()}
    env.setdefault("TUNELAB_LOG_FORMAT", log_format)
    # Everything the suite keeps lives under the var directory, wherever that is.
    env.setdefault("TUNELAB_DATASETS_DATABASE_URL", f"sqlite:///{var_dir() / 'datasets.db'}")
    env.setdefault("TUNELAB_DATASETS_STORAGE_DIR", str(var_dir() / "datasets"))
    env.setdefault("TUNELAB_DEPLOY_DATABASE_URL", f"sqlite:///{var_dir() / 'deploy.db'}")
    env.setdefault("TUNELAB_DEPLOY_LOCAL_WORK_DIR", str(var_dir() / "pods"))
    env.setdefault("TUNELAB_DEPLOY_OUTPUT_DIR", str(var_dir() / "outputs"))
    env.setdefault("TUNELAB_TRACING_DATABASE_URL", f"sqlite:///{var_dir() / 'tracing.db'}")
    env.setdefault("TUNELAB_EVAL_DATABASE_URL", f"sqlite:///{var_dir() / 'eval.db'}")
    return env


def _ports_free(env: dict[str, str], gateway: str) -> bool:
    for variable, address in [("TUNELAB_GATEWAY_PORT", gateway), *_addresses(env)]:
        if not _free(address):
            print(
                f"{address} is already in use (another tunelab?): stop it, or choose another "
                f"address with {variable}; README.md lists the ports",
                flush=True,
            )
            return False
    return True


def _migrate(env: dict[str, str]) -> bool:
    for name, module in SERVICES:
        print(f"migrating {name} ...", flush=True)
        if subprocess.run([sys.executable, "-m", module, "migrate", "upgrade"], env=env).returncode:
            print(f"migrating {name} failed; see above", flush=True)
            return False
    return True


def _addresses(env: dict[str, str]) -> list[tuple[str, str]]:
    return [(var, env.get(var, default)) for var, default in LISTENS if env.get(var, default)]


def _free(address: str) -> bool:
    """Whether nothing listens on host:port ([v6]:port too) yet."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, ValueError):
        return True  # not ours to judge: the server will say what is wrong with it
    with socket.socket(family, kind, proto) as probe:
        # As the servers do: a port left in TIME_WAIT by a previous run is free; a listener isn't.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError:
            return False
    return True


def _ready(gateway: str) -> bool:
    try:
        return httpx.get(f"{gateway}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
