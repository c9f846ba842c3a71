"""The container provider against a real Docker-compatible API (Podman's, tests/podman_api.py):
what the supervisor relies on of any provider (create by name, once; status; list by prefix;
terminate, idempotent; the log tail), as the engine answers it, not as a fake would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from services.deploy.providers.base import (
    GpuRequest,
    PodSpec,
    PodStatus,
    ProviderError,
    ProviderErrorKind,
)
from services.deploy.providers.container import LABEL, ContainerProvider, Limits, Network
from tests.podman_api import TRAINER_IMAGE, remove_pods

LIMITS = Limits(cpus=1, memory_mb=256, pids=128, work_dir_mb=32)


@pytest.fixture
def names() -> str:
    return f"ct{secrets.token_hex(3)}"


@pytest.fixture
def engine(docker_host: str) -> Iterator[docker.DockerClient]:
    with contextlib.closing(docker.DockerClient(base_url=docker_host, timeout=60)) as client:
        yield client


@pytest.fixture
async def provider(docker_host: str, names: str) -> AsyncIterator[ContainerProvider]:
    network = Network(f"tunelab-ct-{names}", f"10.214.{secrets.randbelow(250) + 1}.0/24", False)
    made = ContainerProvider(docker_host, limits=LIMITS, network=network, stop_seconds=2)
    try:
        yield made
    finally:
        await made.close()
        remove_pods(docker_host, f"{names}-", network.name)


def spec(name: str, script: str, **env: str) -> PodSpec:
    return PodSpec(
        name=name,
        image=TRAINER_IMAGE,
        gpu=GpuRequest(type="cpu", count=0),
        command=["bash", "-c", script],
        env=env,
    )


async def settled(provider: ContainerProvider, pod_id: str, seconds: float = 30) -> PodStatus:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        pod = await provider.get(pod_id)
        assert pod is not None
        if pod.status not in (PodStatus.STARTING, PodStatus.RUNNING):
            return pod.status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{pod_id} still running after {seconds} s")


async def test_create_is_idempotent_by_name_and_the_status_follows_the_container(
    provider: ContainerProvider, names: str, engine: docker.DockerClient
) -> None:
    name = f"{names}-dep_a"
    first = await provider.create(spec(name, "echo one; echo two; sleep 1; exit 3"))
    again = await provider.create(spec(name, "echo another"))
    assert again.id == first.id
    assert first.status in (PodStatus.RUNNING, PodStatus.EXITED)
    assert len(engine.api.containers(all=True, filters={"name": name})) == 1
    assert await settled(provider, first.id) is PodStatus.EXITED
    pod = await provider.get(first.id)
    assert pod is not None
    assert pod.exit_code == 3
    assert await provider.log_tail(first.id, 1) == ["two"]
    assert [p.name for p in await provider.list_pods(f"{names}-")] == [name]
    assert await provider.list_pods(f"{names}-other") == []

    await provider.terminate(first.id)
    await provider.terminate(first.id)  # gone already: still success
    assert await provider.get(first.id) is None
    assert await provider.list_pods(f"{names}-") == []
    assert await provider.log_tail(first.id, 5) == []


async def test_a_container_made_but_never_started_is_started_by_the_retry(
    provider: ContainerProvider, names: str, engine: docker.DockerClient, docker_host: str
) -> None:
    name = f"{names}-dep_b"
    # As if the service died between the engine's create and start.
    made = await provider.create(spec(f"{names}-warmup", "true"))  # makes the network
    await provider.terminate(made.id)
    engine.containers.create(
        TRAINER_IMAGE,
        ["bash", "-c", "sleep 30"],
        name=name,
        labels={LABEL: name},
        network=provider.network.name,
    )
    pod = await provider.create(spec(name, "sleep 30"))
    assert pod.status is PodStatus.RUNNING


async def test_a_container_killed_for_memory_is_a_failed_pod_saying_so(
    provider: ContainerProvider, names: str, engine: docker.DockerClient
) -> None:
    pod = await provider.create(spec(f"{names}-dep_c", "exec python -c \"b'x' * (1 << 30)\""))
    status = await settled(provider, pod.id)
    seen = await provider.get(pod.id)
    assert seen is not None
    assert seen.exit_code == 137  # SIGKILL, from the kernel's OOM killer
    # Whether the engine noticed the OOM kill: Docker and Podman on cgroup v2 do; Podman 4.3 on
    # cgroup v1 (these machines) does not, and then the pod's script says it (its cgroup's
    # count: the e2e test of a trainer over its memory limit).
    if engine.containers.get(pod.id).attrs["State"].get("OOMKilled"):
        assert status is PodStatus.FAILED
        assert "ran out of memory" in seen.message
    else:
        assert status is PodStatus.EXITED


async def test_the_pod_gets_its_own_environment_and_none_of_the_services(
    provider: ContainerProvider, names: str, engine: docker.DockerClient
) -> None:
    os.environ["TUNELAB_CONTRACT_SECRET"] = "service-only-" + secrets.token_hex(8)
    try:
        pod = await provider.create(spec(f"{names}-dep_d", "env; sleep 5", POD_OWN="yes"))
    finally:
        secret = os.environ.pop("TUNELAB_CONTRACT_SECRET")
    environment = engine.containers.get(pod.id).attrs["Config"]["Env"]
    assert "POD_OWN=yes" in environment
    assert "TUNELAB_WORK_DIR=/workspace/tunelab" in environment
    assert not any(secret in item for item in environment)
    assert not any(item.startswith("TUNELAB_CONTRACT_SECRET") for item in environment)


async def test_what_the_engine_refuses_is_said_plainly(
    provider: ContainerProvider, names: str, engine: docker.DockerClient, docker_host: str
) -> None:
    missing = PodSpec(
        name=f"{names}-dep_e",
        image="localhost/tunelab-test/absent:1",
        gpu=GpuRequest(type="cpu", count=0),
        command=["true"],
        env={},
    )
    with pytest.raises(ProviderError) as refused:
        await provider.create(missing)
    assert refused.value.kind is ProviderErrorKind.INVALID
    assert "not on this host" in refused.value.message
    assert "make images" in refused.value.message

    host = await provider.host("localhost/tunelab-test/absent:1")
    assert host.image_present is False
    assert host.cpus >= 1
    assert host.memory_bytes > 0
    assert host.engine.startswith("Podman")

    # A network of that name made otherwise (another subnet) is not silently used.
    taken = Network(f"tunelab-ct-{names}-x", "10.215.9.0/24", False)
    engine.networks.create(taken.name, driver="bridge", internal=True)
    other = ContainerProvider(
        docker_host,
        limits=LIMITS,
        network=taken,
    )
    try:
        with pytest.raises(ProviderError) as wrong:
            await other.create(spec(f"{names}-dep_f", "true"))
        assert "TUNELAB_DEPLOY_CONTAINER_SUBNET" in wrong.value.message
    finally:
        await other.close()
        engine.networks.get(taken.name).remove()

    # A subnet another network holds: said before anything runs, not retried for half an hour.
    squatter = engine.networks.create(
        f"tunelab-ct-{names}-sq",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.215.8.0/24")]),
    )
    crowded = ContainerProvider(
        docker_host, limits=LIMITS, network=Network(f"tunelab-ct-{names}-y", "10.215.8.0/24", False)
    )
    try:
        assert "taken by the network" in str((await crowded.host(TRAINER_IMAGE)).network_problem)
        with pytest.raises(ProviderError) as taken_subnet:
            await crowded.create(spec(f"{names}-dep_g", "true"))
        assert taken_subnet.value.kind is ProviderErrorKind.INVALID
        assert "TUNELAB_DEPLOY_CONTAINER_SUBNET" in taken_subnet.value.message
    finally:
        await crowded.close()
        squatter.remove()


async def test_an_engine_that_is_not_there_is_unavailable_saying_how_to_start_one(
    tmp_path: object,
) -> None:
    nowhere = ContainerProvider(
        "unix:///nonexistent/podman.sock",
        limits=LIMITS,
        network=Network("tunelab-ct-none", "10.216.0.0/24", False),
    )
    with pytest.raises(ProviderError) as down:
        await nowhere.list_pods("tunelab-")
    assert down.value.kind is ProviderErrorKind.UNAVAILABLE
    assert "podman system service" in down.value.message
    assert "unix:///nonexistent/podman.sock" in down.value.message
