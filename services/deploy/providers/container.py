"""The container provider: a pod is a container on this host, run through the Docker Engine API
(Docker's, or Podman's compatible one from `podman system service`).

Each container runs the same command with the same environment a RunPod pod gets, and nothing
of the service's own environment. It is hardened by default: an unprivileged user, every
capability dropped, no new privileges, a read-only root filesystem with one size-limited
writable directory (/workspace, a tmpfs), CPU, memory and process limits, no engine socket, and
a network of its own (by default `internal`: no route out, only the deploy service's relay to
the gateway, providers/relay.py). The relay listens on the host's side of that network's
bridge: root Podman or Docker. Rootless Podman keeps its bridges in a namespace of its own,
where the relay cannot listen; there, and with a remote engine, pods are told another way to
the gateway (TUNELAB_DEPLOY_CONTAINER_API_URL).

Containers are named after the run's pod and labelled as ours, so a restarted service finds
them again and the orphan sweep finds what no run owns. The Docker SDK is synchronous: each
call runs in a thread, bounded by the client's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, IPAMConfig, IPAMPool

from services.deploy.providers.base import (
    Cloud,
    GpuType,
    Pod,
    PodSpec,
    PodStatus,
    ProviderError,
    ProviderErrorKind,
)
from services.deploy.providers.relay import Relay

log = logging.getLogger(__name__)

T = TypeVar("T")
_DOCKER_SOCKET = "/var/run/docker.sock"
LABEL = "dev.tunelab.pod"  # the pod's name: what makes a container ours
WORK_DIR = "/workspace"
TMP_DIR = "/tmp"  # noqa: S108  (the container's own: a tmpfs of its own)
USER = "10001:10001"
_STARTING = {"created", "configured", "restarting", "initialized"}
_RUNNING = {"running", "paused"}
# What to do when no engine answers.
START_HINT = (
    "start Podman's Docker-compatible API (podman system service --time=0 "
    "unix:///run/podman/podman.sock) and point TUNELAB_DEPLOY_CONTAINER_DOCKER_HOST at it, or "
    "start Docker"
)


@dataclass(frozen=True)
class Limits:
    """What one container may use."""

    cpus: float
    memory_mb: int
    pids: int
    work_dir_mb: int
    # /dev/shm: PyTorch's data loader workers pass batches through it, and the engines' 64 MiB
    # default is too small for them (dstack and SkyPilot size it too).
    shm_mb: int = 1024
    tmp_mb: int = 256


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    # False: an `internal` network, with no route beyond the host's side of its bridge.
    internet: bool


@dataclass(frozen=True)
class Host:
    """What the pre-flight needs to know of the container host."""

    cpus: int
    memory_bytes: int
    image_present: bool
    gpu_runtime: bool  # the NVIDIA runtime (or CDI) is set up, as far as the API says
    engine: str
    # Why the pods' network cannot be used or made (a subnet taken), or None.
    network_problem: str | None = None


class ContainerProvider:
    name = "container"

    def __init__(
        self,
        docker_host: str,
        *,
        limits: Limits,
        network: Network,
        stop_seconds: int = 10,
        timeout_seconds: float = 60.0,
        relay: Relay | None = None,
    ) -> None:
        """`relay`: the pods' way to the gateway, started on first use; None where they
        reach it without one."""
        self._relay = relay
        self.docker_host = docker_host
        self.limits = limits
        self.network = network
        self.stop_seconds = stop_seconds
        self._timeout = timeout_seconds
        self._client: docker.DockerClient | None = None
        self._connecting = threading.Lock()  # calls run in threads: one client for all
        self._network_ready = False
        self._engine: str | None = None

    def configured(self) -> bool:
        """Whether an engine is named (a setting, DOCKER_HOST) or Docker's socket exists:
        where none is, the orphan sweep does not complain every pass of what nobody uses."""
        return bool(
            self.docker_host or os.environ.get("DOCKER_HOST") or os.path.exists(_DOCKER_SOCKET)
        )

    def _connect(self) -> docker.DockerClient:
        if self.docker_host:
            return docker.DockerClient(base_url=self.docker_host, timeout=int(self._timeout))
        return docker.from_env(timeout=int(self._timeout))

    async def _call(self, work: Callable[[docker.DockerClient], T]) -> T:
        return await asyncio.to_thread(self._run, work)

    async def _relaying(self) -> None:
        """The relay listens before a pod is made, and before one is watched (a pod the
        service found again after a restart reports through it)."""
        if self._relay is not None:
            await self._relay.ensure()

    def _run(self, work: Callable[[docker.DockerClient], T]) -> T:
        try:
            with self._connecting:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
            return work(client)
        except ProviderError:
            raise
        except APIError as exc:
            raise _api_error(exc) from None
        except (DockerException, requests.RequestException, OSError) as exc:
            where = self.docker_host or "DOCKER_HOST"
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE,
                f"the container API at {where} cannot be reached ({_short(exc)}): {START_HINT}",
            ) from None

    # The provider interface -------------------------------------------------------------------

    async def create(self, spec: PodSpec) -> Pod:
        await self._relaying()
        return await self._call(lambda client: self._create(client, spec))

    def _create(self, client: docker.DockerClient, spec: PodSpec) -> Pod:
        existing = _find(client, spec.name)
        if existing is not None:
            if existing.status == "created":  # made, then the start failed or was lost
                existing.start()
                existing.reload()
            return _pod(existing)
        self._ensure_network(client)
        try:
            # create, then start: `run` would pull a missing image from a registry, where the
            # pre-flight promised the image on this host.
            container = client.containers.create(
                spec.image,
                list(spec.command),
                name=spec.name,
                labels={LABEL: spec.name},
                environment={
                    **spec.env,
                    "HOME": WORK_DIR,
                    "TMPDIR": TMP_DIR,
                    "TUNELAB_WORK_DIR": f"{WORK_DIR}/tunelab",
                },
                user=USER,
                working_dir=WORK_DIR,
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                tmpfs={
                    # exec: the GPU trainer's packages (native code) are installed here.
                    WORK_DIR: f"rw,exec,nosuid,nodev,size={self.limits.work_dir_mb}m,"
                    + self._owner(client),
                    TMP_DIR: f"rw,noexec,nosuid,nodev,size={self.limits.tmp_mb}m,mode=1777",
                },
                shm_size=f"{self.limits.shm_mb}m",
                mem_limit=f"{self.limits.memory_mb}m",
                memswap_limit=f"{self.limits.memory_mb}m",  # no swap beyond the limit
                nano_cpus=int(self.limits.cpus * 1e9),
                pids_limit=self.limits.pids,
                network=self.network.name,
                device_requests=_gpus(spec.gpu.count),
                stdin_open=False,
                tty=False,
            )
        except APIError as exc:
            if exc.status_code == 409:  # another attempt made it meanwhile: that one is ours
                found = _find(client, spec.name)
                if found is not None:
                    return _pod(found)
            self._network_ready = False  # checked (and made again) on the next attempt
            said = str(exc.explanation or exc)
            if exc.status_code == 404 and "image" in said.lower():
                raise ProviderError(ProviderErrorKind.INVALID, _image_missing(exc)) from None
            if exc.status_code == 404:  # the network went away meanwhile: worth a retry
                raise ProviderError(ProviderErrorKind.UNAVAILABLE, _short(said)) from None
            raise
        container.start()
        container.reload()
        log.info("container pod started", extra={"pod": spec.name, "container": container.id})
        return _pod(container)

    def _owner(self, client: docker.DockerClient) -> str:
        """The tmpfs option that gives the work directory to the pod's user: Podman ignores
        uid= and mode= there and takes U (chown to the container's user) instead."""
        if self._engine_name(client).startswith("Podman"):
            return "U"
        uid, gid = USER.split(":")
        return f"uid={uid},gid={gid},mode=0700"

    def _engine_name(self, client: docker.DockerClient) -> str:
        """ "Podman 4.3.1", "Docker 28.2.2": asked once."""
        if self._engine is None:
            self._engine = _engine(client)
        return self._engine

    def _ensure_network(self, client: docker.DockerClient) -> None:
        if self._network_ready:
            return
        problem = self._network_problem(client)
        if problem:
            raise ProviderError(ProviderErrorKind.INVALID, problem)
        try:
            client.networks.create(
                self.network.name,
                driver="bridge",
                internal=not self.network.internet,
                ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=self.network.subnet)]),
                labels={LABEL: "network"},
            )
        except APIError as exc:
            if exc.status_code != 409 and "already exists" not in str(exc.explanation or ""):
                raise
        self._network_ready = True

    def _network_problem(self, client: docker.DockerClient) -> str | None:
        """Why the pods' network cannot be used or made as set up, or None (it is fine, or
        it does not exist yet and its subnet is free)."""
        wanted = self.network
        for found in client.networks.list():
            attrs = found.attrs
            if found.name == wanted.name:
                return _mismatch(attrs, wanted)
            if wanted.subnet in _subnets(attrs):
                return (
                    f"subnet {wanted.subnet} is taken by the network {found.name} on the "
                    "container host: set TUNELAB_DEPLOY_CONTAINER_SUBNET to a free one (podman "
                    "network ls, podman network inspect)"
                )
        return None

    async def get(self, pod_id: str) -> Pod | None:
        await self._relaying()

        def get(client: docker.DockerClient) -> Pod | None:
            try:
                return _pod(client.containers.get(pod_id))
            except APIError as exc:
                if _missing(exc):
                    return None
                raise

        return await self._call(get)

    async def list_pods(self, name_prefix: str) -> list[Pod]:
        def listed(client: docker.DockerClient) -> list[Pod]:
            # One call for the summaries: inspecting each in turn races with their removal.
            found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": LABEL})
            pods = []
            for summary in found:
                name = str((summary.get("Names") or [""])[0]).lstrip("/")
                if name.startswith(name_prefix):
                    state = str(summary.get("State") or "").lower()
                    pods.append(_pod_of(str(summary["Id"]), name, {"Status": state}))
            return pods

        pods = await self._call(listed)
        return [p for p in pods if p.status is not PodStatus.TERMINATED]

    async def terminate(self, pod_id: str) -> None:
        def terminate(client: docker.DockerClient) -> None:
            try:
                container = client.containers.get(pod_id)
                if container.status in _RUNNING:
                    # The script's TERM trap stops the trainer and the heartbeat first.
                    container.stop(timeout=self.stop_seconds)
                container.remove(v=True, force=True)
            except APIError as exc:
                if _missing(exc):
                    return
                if exc.status_code != 409 or "in progress" not in str(exc.explanation or ""):
                    raise
            log.info("container pod removed", extra={"pod": container.name})

        await self._call(terminate)

    async def gpu_types(self, count: int = 1, cloud: Cloud = "secure") -> list[GpuType]:
        return []  # no catalogue: the host has what it has

    async def billed_usd(self, pod_id: str, since: datetime) -> float | None:
        return None  # a container on this host costs nothing

    async def log_tail(self, pod_id: str, lines: int) -> list[str]:
        def tail(client: docker.DockerClient) -> list[str]:
            if lines <= 0:
                return []
            try:
                raw = client.containers.get(pod_id).logs(stdout=True, stderr=True, tail=lines)
            except APIError as exc:
                if _missing(exc):
                    return []
                raise
            return bytes(raw).decode(errors="replace").splitlines()[-lines:]

        return await self._call(tail)

    async def aclose(self) -> None:
        return None  # one client for the service's life: close() closes it

    async def close(self) -> None:
        if self._relay is not None:
            await self._relay.close()
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    # The pre-flight ----------------------------------------------------------------------------

    async def host(self, image: str) -> Host:
        """The host's CPUs and memory, whether `image` is there, and whether GPUs can be
        given to containers; ProviderError UNAVAILABLE when the API cannot be reached."""

        def host(client: docker.DockerClient) -> Host:
            info: dict[str, Any] = client.info()
            try:
                client.images.get(image)
                present = True
            except ImageNotFound:
                present = False
            runtimes = info.get("Runtimes") or {}
            cdi = info.get("CDISpecDirs") or []
            return Host(
                cpus=int(info.get("NCPU") or 0),
                memory_bytes=int(info.get("MemTotal") or 0),
                image_present=present,
                gpu_runtime="nvidia" in runtimes or bool(cdi),
                engine=self._engine_name(client),
                network_problem=self._network_problem(client),
            )

        return await self._call(host)


def _find(client: docker.DockerClient, name: str) -> Container | None:
    try:
        found = client.containers.get(name)
    except APIError as exc:
        if _missing(exc):
            return None
        raise
    return found if (found.labels or {}).get(LABEL) == name else None


def _missing(exc: APIError) -> bool:
    """Whether the engine says the container is gone: Docker's 404, or Podman's 500 for one
    removed between two calls."""
    return isinstance(exc, NotFound) or "no such container" in str(exc.explanation or "")


def _pod(container: Container) -> Pod:
    """The container as the supervisor sees a pod."""
    state: dict[str, Any] = container.attrs.get("State") or {}
    if not state.get("Status"):
        state = {**state, "Status": container.status}
    return _pod_of(container.id or "", container.name or "", state)


def _pod_of(cid: str, name: str, state: dict[str, Any]) -> Pod:
    """A pod from a container's State (Status, ExitCode, OOMKilled, Error)."""
    status = str(state.get("Status") or "").lower()
    cid = cid or name
    if status in _STARTING:
        return Pod(id=cid, name=name, status=PodStatus.STARTING)
    if status in _RUNNING:
        return Pod(id=cid, name=name, status=PodStatus.RUNNING)
    if status in {"removing", "stopping"}:
        return Pod(id=cid, name=name, status=PodStatus.TERMINATED)
    code = state.get("ExitCode")
    code = int(code) if isinstance(code, int) else None
    if state.get("OOMKilled"):
        return Pod(
            id=cid,
            name=name,
            status=PodStatus.FAILED,
            exit_code=code,
            message="the container ran out of memory and was killed "
            "(TUNELAB_DEPLOY_CONTAINER_MEMORY_MB sets its limit)",
        )
    if status == "dead" or (status == "exited" and state.get("Error")):
        error = str(state.get("Error") or "the container is dead")
        return Pod(id=cid, name=name, status=PodStatus.FAILED, exit_code=code, message=error[:500])
    return Pod(id=cid, name=name, status=PodStatus.EXITED, exit_code=code)


def _gpus(count: int) -> list[DeviceRequest] | None:
    """The GPUs a container asks for: Docker's device requests (the NVIDIA container toolkit
    serves them; Podman needs its CDI spec instead, `nvidia-ctk cdi generate`)."""
    if count <= 0:
        return None
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def _subnets(attrs: dict[str, Any]) -> list[str]:
    return [
        str(pool.get("Subnet"))
        for pool in ((attrs.get("IPAM") or {}).get("Config") or [])
        if pool.get("Subnet")
    ]


def _mismatch(attrs: dict[str, Any], wanted: Network) -> str | None:
    """How a network of the wanted name differs from what the settings ask for, or None."""
    subnets = _subnets(attrs)
    if wanted.subnet not in subnets:
        return (
            f"the container network {wanted.name} exists with subnet {', '.join(subnets) or 'none'}"
            f", not {wanted.subnet}: remove it (podman network rm {wanted.name}) or set "
            "TUNELAB_DEPLOY_CONTAINER_SUBNET to its subnet"
        )
    if bool(attrs.get("Internal")) == wanted.internet:
        now = "internal" if attrs.get("Internal") else "routed to the internet"
        return (
            f"the container network {wanted.name} is {now}, which TUNELAB_DEPLOY_CONTAINER_"
            f"INTERNET does not ask for: remove it (podman network rm {wanted.name}); the next "
            "run makes it again"
        )
    return None


def _engine(client: docker.DockerClient) -> str:
    version: dict[str, Any] = client.version()
    for part in version.get("Components") or []:
        if "podman" in str(part.get("Name", "")).lower():
            return f"Podman {part.get('Version', '')}".strip()
    return f"Docker {version.get('Version', '')}".strip()


def _api_error(exc: APIError) -> ProviderError:
    message = _short(exc.explanation or exc)
    status = exc.status_code or 500
    if status == 404:
        return ProviderError(ProviderErrorKind.NOT_FOUND, message)
    if status in (400, 409):
        return ProviderError(ProviderErrorKind.INVALID, f"the container engine refused: {message}")
    if status in (401, 403):
        return ProviderError(ProviderErrorKind.NOT_ALLOWED, message)
    return ProviderError(ProviderErrorKind.UNAVAILABLE, f"the container engine failed: {message}")


def _image_missing(exc: APIError) -> str:
    return (
        f"the pod image is not on this host ({_short(exc.explanation or exc)}): `make images` "
        "builds localhost/tunelab/trainer; pull or build any other image first"
    )


def _short(exc: object) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
