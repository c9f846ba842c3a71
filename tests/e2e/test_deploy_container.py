"""Training runs on the container provider, end to end: the suite's real processes, and each
pod a container run through Podman's Docker-compatible API (started here, tests/podman_api.py)
from the image `make images` builds, reaching the gateway only through the deploy service's
relay on an internal network."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from scripts.podman import podman
from services.deploy.providers.container import LABEL
from tests.conftest import PgDatabases
from tests.e2e.conftest import Suite, paired_suite
from tests.e2e.test_deploy_local import (
    TERMINAL,
    chat_rows,
    released,
    upload,
    wait_until,
)
from tests.podman_api import TRAINER_IMAGE, remove_pods
from tests.unit.test_trainer import preference_rows

pytestmark = pytest.mark.e2e

MEMORY_MB = 512
HOSTILE = "localhost/tunelab-test/hostile"
# What a hostile trainer does before it trains (a module the image's site-packages imports at
# start, through a .pth file, in the trainer's Python only): write outside the work directory,
# or take twice the memory limit.
_HOSTILE_MODULE = """\
import os
import sys
if any(arg.startswith("tunelab_trainer.") for arg in sys.orig_argv):
    {action}
"""
_ACTIONS = {
    "write": """try:
        with open("/opt/venv/lib/python3.11/site-packages/planted.py", "w") as f:
            f.write("print('planted')")
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)""",
    "memory": f"hoard = b'x' * ({2 * MEMORY_MB} * 1024 * 1024)",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suite(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgDatabases,
    docker_host: str,
) -> Iterator[Suite]:
    tag = secrets.token_hex(3)
    prefix, network = f"e2e{tag}", f"tunelab-e2e-{tag}"
    env = {
        "TUNELAB_DEPLOY_CONTAINER_DOCKER_HOST": docker_host,
        "TUNELAB_DEPLOY_CONTAINER_NETWORK": network,
        "TUNELAB_DEPLOY_CONTAINER_SUBNET": f"10.213.{random.randint(1, 250)}.0/24",
        "TUNELAB_DEPLOY_CONTAINER_MEMORY_MB": str(MEMORY_MB),
        "TUNELAB_DEPLOY_CONTAINER_WORK_DIR_MB": "128",
        "TUNELAB_DEPLOY_CONTAINER_SHM_MB": "64",
        "TUNELAB_DEPLOY_CONTAINER_CPUS": "1",
        "TUNELAB_DEPLOY_CONTAINER_STOP_SECONDS": "3",
        "TUNELAB_DEPLOY_POD_NAME_PREFIX": prefix,
    }
    try:
        with paired_suite(request, tmp_path_factory, pg, **env) as running:
            yield running
    finally:
        remove_pods(docker_host, f"{prefix}-", network)


@pytest.fixture(scope="module")
def engine(docker_host: str) -> Iterator[docker.DockerClient]:
    with contextlib.closing(docker.DockerClient(base_url=docker_host, timeout=60)) as client:
        yield client


@pytest.fixture(scope="module")
def hostile(
    docker_host: str, tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient
) -> Iterator[dict[str, str]]:
    """Images of trainers that misbehave, built on the pod image: "write" and "memory"."""
    images = {}
    for name, action in _ACTIONS.items():
        context = tmp_path_factory.mktemp(f"hostile-{name}")
        (context / "hostile.py").write_text(_HOSTILE_MODULE.format(action=action))
        (context / "hostile.pth").write_text("import hostile\n")
        (context / "Containerfile").write_text(
            f"FROM {TRAINER_IMAGE}\n"
            "COPY hostile.py hostile.pth /opt/venv/lib/python3.11/site-packages/\n"
        )
        image = f"{HOSTILE}:{name}"
        podman("build", "--quiet", "--tag", image, str(context))
        images[name] = image
    yield images
    for image in images.values():
        engine.images.remove(image, force=True)


def container_request(dataset_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "provider": "container",
        "dataset_id": dataset_id,
        "method": "sft",
        "hyperparameters": {"epochs": 1},
        "limits": {"max_runtime_minutes": 10, "max_cost_usd": 1},
        **fields,
    }


def pod_name(suite: Suite, deployment_id: str) -> str:
    return f"{suite.env['TUNELAB_DEPLOY_POD_NAME_PREFIX']}-{deployment_id}"


def summaries(engine: docker.DockerClient, name: str) -> list[Any]:
    """The pod container `name` as the engine lists it (one call: no race with its removal)."""
    found = engine.api.containers(all=True, filters={"label": LABEL})
    return [c for c in found if name in (n.lstrip("/") for n in c["Names"])]


def containers_of(engine: docker.DockerClient, suite: Suite, deployment_id: str) -> list[Any]:
    named = summaries(engine, pod_name(suite, deployment_id))
    return [engine.containers.get(c["Id"]) for c in named]


def vanished(engine: docker.DockerClient, name: str, seconds: float = 20) -> bool:
    """Whether the container `name` is gone within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not summaries(engine, name):
            return True
        time.sleep(0.2)
    return False


def gone(
    engine: docker.DockerClient, suite: Suite, deployment_id: str, seconds: float = 20
) -> bool:
    return vanished(engine, pod_name(suite, deployment_id), seconds)


def falling_losses(client: httpx.Client, deployment_id: str) -> list[float]:
    metrics = client.get(f"/v1/deployments/{deployment_id}/metrics").json()["metrics"]
    return [m["progress"]["loss"] for m in metrics]


def test_sft_and_dpo_train_in_hardened_containers_and_leave_none(
    suite: Suite, engine: docker.DockerClient
) -> None:
    alice = suite.client("alice")
    sft = upload(alice, "sft.jsonl", chat_rows(150))
    preflight = alice.post("/v1/deployments/preflight", json=container_request(sft))
    assert preflight.status_code == 200, preflight.text
    checks = {c["name"]: c for c in preflight.json()["checks"]}
    assert preflight.json()["ok"] is True, checks
    assert checks["container_api"]["message"].startswith("Podman"), checks
    assert checks["image"]["status"] == "pass"
    assert "only the gateway" in checks["network"]["message"]
    assert checks["callback_url"]["message"].endswith(f":{suite.url.rsplit(':', 1)[1]}"), (
        checks
    )  # the relay, on the gateway's port

    created = alice.post("/v1/deployments", json=container_request(sft))
    assert created.status_code == 201, created.text
    sft_id = created.json()["id"]
    wait_until(alice, sft_id, {"training", *TERMINAL})
    (container,) = containers_of(engine, suite, sft_id)
    _assert_hardened(container.attrs, suite)
    # What the pod's first process holds, as the kernel says: no capability, no way to more.
    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0, fields["CapEff"]
    assert int(fields["CapBnd"], 16) == 0, fields["CapBnd"]
    assert fields["NoNewPrivs"].strip() == "1"

    pairs = "".join(json.dumps(row) + "\n" for row in preference_rows(120)).encode()
    dpo = upload(alice, "dpo.jsonl", pairs)
    body = container_request(dpo, method="dpo", hyperparameters={"epochs": 2})
    dpo_id = alice.post("/v1/deployments", json=body).json()["id"]

    for deployment_id in (sft_id, dpo_id):
        done = wait_until(alice, deployment_id, TERMINAL, seconds=180)
        assert done["state"] == "succeeded", done
        losses = falling_losses(alice, deployment_id)
        assert len(losses) >= 2, losses
        assert losses[-1] < losses[0], losses
        assert done["system_info"]["python"].startswith("Python 3.11")
        released(alice, deployment_id, seconds=30)
        assert gone(engine, suite, deployment_id)
        output = alice.get(f"/v1/deployments/{deployment_id}/output", follow_redirects=True)
        assert output.status_code == 200
        assert output.content[:2] == b"\x1f\x8b"
    logs = suite.logs()
    for secret in suite.secrets_seen:
        assert secret not in logs


def _assert_hardened(attrs: dict[str, Any], suite: Suite) -> None:
    host = attrs["HostConfig"]
    config = attrs["Config"]
    assert config["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    assert not host.get("CapAdd")
    assert any("no-new-privileges" in opt for opt in host["SecurityOpt"] or [])
    assert host["Privileged"] is False
    assert host["Memory"] == MEMORY_MB * 1024 * 1024
    assert host["MemorySwap"] == MEMORY_MB * 1024 * 1024
    assert host["NanoCpus"] == 10**9
    assert host["PidsLimit"] > 0
    assert host["ShmSize"] == 64 * 1024 * 1024
    assert "size=128m" in host["Tmpfs"]["/workspace"]
    mounts = json.dumps(attrs.get("Mounts") or []) + json.dumps(host.get("Binds") or [])
    assert ".sock" not in mounts
    environment = dict(item.split("=", 1) for item in config["Env"] or [])
    for name in ("TUNELAB_INTERNAL_TOKEN", "TUNELAB_DEPLOY_KEYS_KEK", "TUNELAB_JWT_SECRET"):
        assert name not in environment
    assert suite.env["TUNELAB_INTERNAL_TOKEN"] not in json.dumps(config["Env"])
    networks = attrs["NetworkSettings"]["Networks"]
    assert list(networks) == [suite.env["TUNELAB_DEPLOY_CONTAINER_NETWORK"]]


def test_the_pods_network_reaches_the_gateway_and_nothing_else(
    suite: Suite, engine: docker.DockerClient
) -> None:
    network = engine.networks.get(suite.env["TUNELAB_DEPLOY_CONTAINER_NETWORK"])
    assert network.attrs["Internal"] is True
    subnet = suite.env["TUNELAB_DEPLOY_CONTAINER_SUBNET"]
    relay = next(ipaddress.ip_network(subnet).hosts())  # the host's side: where it listens
    port = suite.url.rsplit(":", 1)[1]
    probe = (
        f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 http://{relay}:{port}/healthz; echo; "
        # PostgreSQL and the gRPC services listen on the host's loopback; the internet is out.
        f"curl -s -m 3 http://{relay}:5432 >/dev/null; echo $?; "
        "curl -s -m 3 http://1.1.1.1 >/dev/null; echo $?"
    )
    out = engine.containers.run(
        TRAINER_IMAGE,
        ["bash", "-c", probe],
        network=network.name,
        user="10001:10001",
        remove=False,
        detach=True,
    )
    try:
        status = out.wait(timeout=60)
        lines = out.logs().decode().split()
    finally:
        out.remove(force=True)
    assert status["StatusCode"] == 0
    assert lines[0] == "200", lines  # the gateway, through the relay
    assert lines[1] != "0", lines
    assert lines[2] != "0", lines


def test_cancel_mid_run_removes_the_container(suite: Suite, engine: docker.DockerClient) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "long.jsonl", chat_rows(200))
    body = container_request(dataset_id, hyperparameters={"max_steps": 10_000_000})
    deployment_id = alice.post("/v1/deployments", json=body).json()["id"]
    wait_until(alice, deployment_id, {"training"}, seconds=90)
    assert containers_of(engine, suite, deployment_id)
    cancelled = alice.post(f"/v1/deployments/{deployment_id}/cancel", json={})
    assert cancelled.json()["state"] == "cancelled"
    assert gone(engine, suite, deployment_id)
    released(alice, deployment_id)


def test_a_deploy_service_killed_mid_run_leaves_no_container_behind(
    suite: Suite, engine: docker.DockerClient
) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "adopt.jsonl", chat_rows(150))
    body = container_request(dataset_id, hyperparameters={"epochs": 3})
    deployment_id = alice.post("/v1/deployments", json=body).json()["id"]
    wait_until(alice, deployment_id, {"training"}, seconds=90)
    suite.kill("deploy")
    # The pod outlives the service (the engine runs it, not the service's process).
    (container,) = containers_of(engine, suite, deployment_id)
    assert container.status == "running"
    suite.start("deploy")
    done = wait_until(alice, deployment_id, TERMINAL, seconds=180)
    assert done["state"] == "succeeded", done
    assert gone(engine, suite, deployment_id)


def test_a_container_named_as_a_pod_that_no_run_owns_is_swept_away(
    suite: Suite, engine: docker.DockerClient
) -> None:
    # A pod whose run this database never recorded (a crash between the engine's create and
    # the record, another installation's leftovers under our prefix): it would run forever.
    name = pod_name(suite, "dep_" + "a" * 26)
    engine.containers.run(
        TRAINER_IMAGE,
        ["sleep", "600"],
        name=name,
        labels={LABEL: name},
        network_mode="none",
        detach=True,
    )
    assert vanished(engine, name, seconds=30), f"the orphan sweep left {name} running"
    assert "terminated an orphan pod" in suite.logs()


@pytest.mark.parametrize(
    ("misdeed", "said"),
    [
        # The root filesystem is read-only: only /workspace (and /tmp) take writes.
        ("write", ["Read-only file system", "/opt/venv/lib/python3.11/site-packages"]),
        # The kernel kills it at the limit, and the pod's script says so (its cgroup's count).
        ("memory", ["ran out of memory", f"memory limit is {MEMORY_MB} MiB"]),
    ],
)
def test_a_trainer_that_oversteps_its_container_fails_saying_why(
    suite: Suite,
    engine: docker.DockerClient,
    hostile: dict[str, str],
    misdeed: str,
    said: list[str],
) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, f"{misdeed}.jsonl", chat_rows(40))
    body = container_request(dataset_id, image=hostile[misdeed])
    deployment_id = alice.post("/v1/deployments", json=body).json()["id"]
    done = wait_until(alice, deployment_id, TERMINAL, seconds=120)
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "TRAINER_FAILED"
    for words in said:
        assert words in done["error"]["message"], done["error"]
    assert gone(engine, suite, deployment_id)


def test_an_image_not_on_the_host_is_refused_before_anything_runs(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "missing.jsonl", chat_rows(10))
    body = container_request(dataset_id, image="localhost/tunelab-test/absent:1")
    refused = alice.post("/v1/deployments", json=body)
    assert refused.status_code == 400, refused.text
    assert "not on the container host" in refused.text
    assert "make images" in refused.text


def test_requests_that_make_no_sense_in_a_container_are_refused(suite: Suite) -> None:
    alice = suite.client("alice")
    dataset_id = upload(alice, "invalid.jsonl", chat_rows(10))
    for gpu, field in (
        ({"type": "NVIDIA RTX A4000"}, "gpu.type"),
        ({"spot": True}, "gpu.spot"),
        ({"count": 1}, "gpu.count"),  # the tiny model trains on the CPU
    ):
        refused = alice.post("/v1/deployments", json=container_request(dataset_id, gpu=gpu))
        assert refused.status_code == 400, refused.text
        assert field in refused.text
    model = alice.post(
        "/v1/deployments", json=container_request(dataset_id, base_model="Qwen/Qwen2.5-0.5B")
    )
    assert model.status_code == 400
    assert "gpu.count" in model.text
