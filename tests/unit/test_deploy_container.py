"""The container provider's parts that need no engine: how a container's state reads as a pod's,
its settings, the requests it accepts, and the relay that is its pods' one way to the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import ServiceError
from services.deploy.providers.base import PodStatus
from services.deploy.providers.container import _pod_of
from services.deploy.providers.relay import Relay
from services.deploy.settings import DeploySettings
from services.deploy.spec import parse
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb


@pytest.mark.parametrize(
    ("state", "status", "code", "message"),
    [
        ({"Status": "created"}, PodStatus.STARTING, None, ""),
        ({"Status": "configured"}, PodStatus.STARTING, None, ""),  # Podman's word for it
        ({"Status": "running"}, PodStatus.RUNNING, None, ""),
        ({"Status": "exited", "ExitCode": 0}, PodStatus.EXITED, 0, ""),
        ({"Status": "exited", "ExitCode": 3}, PodStatus.EXITED, 3, ""),
        (
            {"Status": "exited", "ExitCode": 137, "OOMKilled": True},
            PodStatus.FAILED,
            137,
            "ran out of memory",
        ),
        (
            {"Status": "exited", "ExitCode": 127, "Error": "exec: bash: not found"},
            PodStatus.FAILED,
            127,
            "bash: not found",
        ),
        ({"Status": "dead", "ExitCode": 1}, PodStatus.FAILED, 1, "dead"),
        ({"Status": "removing"}, PodStatus.TERMINATED, None, ""),
    ],
)
def test_a_containers_state_reads_as_the_supervisor_expects(
    state: dict[str, Any], status: PodStatus, code: int | None, message: str
) -> None:
    pod = _pod_of("c0ffee", "tunelab-dep_x", state)
    assert (pod.id, pod.name) == ("c0ffee", "tunelab-dep_x")
    assert pod.status is status
    assert pod.exit_code == code
    assert message in pod.message


def settings(**values: Any) -> DeploySettings:
    return DeploySettings(internal_token="t" * 32, **values)


def test_container_pods_reach_the_gateway_through_the_relay_on_their_network() -> None:
    plain = settings(public_url="http://127.0.0.1:8080")
    assert plain.relay_listen() == ("10.213.0.1", 8080)
    assert plain.api_url("container") == "http://10.213.0.1:8080"
    assert plain.gateway_address() == ("127.0.0.1", 8080)
    # A dataset link under the public URL is rewritten to the relay's.
    link = plain.pod_url("container", "http://127.0.0.1:8080/v1/dl/abc?x=1")
    assert link == "http://10.213.0.1:8080/v1/dl/abc?x=1"

    moved = settings(
        public_url="https://tunelab.example.com",
        local_api_url="http://gateway:8080",
        container_subnet="172.30.5.0/24",
        container_relay_port=18080,
    )
    assert moved.gateway_address() == ("gateway", 8080)  # where the service reaches it
    assert moved.api_url("container") == "http://172.30.5.1:18080"

    told = settings(container_api_url="http://host.docker.internal:8080/")
    assert told.api_url("container") == "http://host.docker.internal:8080"
    assert told.api_url("runpod") == told.public_url.rstrip("/")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("container_subnet", "10.213.0.0/31"),
        ("container_subnet", "fd00::/64"),
        ("container_subnet", "not a subnet"),
        ("container_api_url", "gateway:8080"),
        ("container_api_url", "file:///etc/passwd"),
        ("container_network", "bad name!"),
        ("container_memory_mb", 16),
    ],
)
def test_container_settings_that_cannot_work_are_refused_at_start(name: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        settings(**{name: value})


def request(**fields: Any) -> api.DeploymentSpec:
    message = api.DeploymentSpec(
        provider="container",
        dataset_id="ds_x",
        method=pb.TRAINING_METHOD_SFT,
        limits=pb.Limits(max_runtime_minutes=10, max_cost_usd=1),
    )
    for name, value in fields.items():
        if name == "gpu":
            message.gpu.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def test_a_container_run_trains_the_tiny_model_on_the_trainer_image_by_default() -> None:
    spec = parse(request(), default_image="runpod/pytorch:x", container_image="local/trainer")
    assert spec.base_model == "tiny"
    assert spec.image == "local/trainer"
    assert spec.trainer == "tiny"
    assert spec.gpu.count == 0
    assert spec.hyperparameters.learning_rate == 0.001  # the tiny trainer's default

    gpu = parse(
        request(base_model="Qwen/Qwen2.5-0.5B", gpu=pb.GpuSpec(count=2)),
        default_image="runpod/pytorch:x",
        container_image="local/trainer",
    )
    assert gpu.image == "runpod/pytorch:x"  # the TRL image, for the host's GPUs
    assert gpu.trainer == "trl"
    assert gpu.gpu.count == 2


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"gpu": pb.GpuSpec(type="NVIDIA RTX A4000")}, "gpu.type"),
        ({"gpu": pb.GpuSpec(spot=True)}, "gpu.spot"),
        ({"gpu": pb.GpuSpec(cloud=pb.CLOUD_COMMUNITY)}, "gpu.cloud"),
        ({"gpu": pb.GpuSpec(fallback_types=["x"])}, "gpu.fallback_types"),
        ({"gpu": pb.GpuSpec(count=1)}, "gpu.count"),  # tiny trains on the CPU
        ({"base_model": "Qwen/Qwen2.5-0.5B"}, "gpu.count"),  # a real model needs GPUs
        ({"base_model": "Qwen/Qwen2.5-0.5B", "gpu": pb.GpuSpec(count=9)}, "gpu.count"),
    ],
)
def test_container_requests_that_make_no_sense_name_the_field(
    fields: dict[str, Any], where: str
) -> None:
    with pytest.raises(ServiceError) as refused:
        parse(request(**fields), default_image="runpod/pytorch:x")
    assert where in str(refused.value)


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_the_relay_passes_bytes_both_ways_and_each_end_sees_the_others() -> None:
    server, port = await _echo_server()
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", port))
    await relay.ensure()
    await relay.ensure()  # once listening, a no-op
    listening = relay.address()
    reader, writer = await asyncio.open_connection(*listening)
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one read and the socket buffers
    writer.write(payload)
    writer.write_eof()
    echoed = await asyncio.wait_for(reader.read(-1), timeout=10)  # ends: the far end closed
    assert echoed == payload
    writer.close()
    await relay.close()
    server.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*listening)


async def test_a_relay_to_a_gateway_that_is_down_closes_the_pods_connection() -> None:
    server, port = await _echo_server()
    server.close()
    await server.wait_closed()
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", port))
    await relay.ensure()
    reader, writer = await asyncio.open_connection(*relay.address())
    assert await asyncio.wait_for(reader.read(-1), timeout=15) == b""
    writer.close()
    await relay.close()
