"""A Docker-compatible API for the container provider's tests and bench: Podman's own
(`podman system service`, with this project's containers.conf), started for as long as they
need it, with the pod image (localhost/tunelab/trainer) built by `make images`' script.

Podman is installed from Debian's packages where it is missing and this is root on Debian (CI's
machines); elsewhere the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker

from scripts.podman import CONTAINERS_CONF, ensure_installed
from services.deploy.providers.container import LABEL

ROOT = Path(__file__).resolve().parent.parent
TRAINER_IMAGE = "localhost/tunelab/trainer:latest"


class Unavailable(Exception):
    """No Docker-compatible API can be started here; the message says why."""


def _podman() -> str:
    """Podman's path. The project's CONTAINERS_CONF becomes this process's default, which the
    image build and the service then inherit."""
    if os.environ.get("CONTAINER_TOOL", "podman") != "podman":
        raise Unavailable("CONTAINER_TOOL is not podman: the tests start Podman's API service")
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    try:
        ensure_installed(debootstrap=True)
    except SystemExit as exc:
        raise Unavailable(f"podman cannot be installed here: {exc}") from None
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"apt-get could not install podman (status {exc.returncode})") from None
    found = shutil.which("podman")
    if found is None:
        raise Unavailable("podman is not installed")
    return found


def build_trainer_image() -> None:
    """Build (or bring up to date: the layers are cached) the container pods' image."""
    built = subprocess.run(
        [sys.executable, "-m", "scripts.images", "trainer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise AssertionError(
            f"the trainer image did not build:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"
        )


@contextlib.contextmanager
def podman_api(directory: Path) -> Iterator[str]:
    """DOCKER_HOST of a Podman API service listening on a socket under `directory` until the
    block ends; Unavailable when none can be started."""
    podman = _podman()
    build_trainer_image()
    socket_path = directory / "podman.sock"
    with (directory / "podman-service.log").open("ab") as log:
        service = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket_path}"],
            # conmon (Podman 4.3's) leaves a file named `oom` in its working directory when a
            # container is OOM-killed: here, not in the repository.
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    host = f"unix://{socket_path}"
    try:
        _wait_for(host, service)
        yield host
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _wait_for(host: str, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise Unavailable(f"podman system service exited with status {service.returncode}")
        try:
            with contextlib.closing(docker.DockerClient(base_url=host, timeout=5)) as client:
                client.ping()
            return
        except docker.errors.DockerException:
            time.sleep(0.2)
    raise Unavailable("podman system service did not answer within 30 s")


def remove_pods(host: str, name_prefix: str, network: str) -> None:
    """Remove what a test left on the engine: the pod containers named with its prefix, then
    its network."""
    with contextlib.closing(docker.DockerClient(base_url=host, timeout=60)) as client:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            if (container.name or "").startswith(name_prefix):
                container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network).remove()
