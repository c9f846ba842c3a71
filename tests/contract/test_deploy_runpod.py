"""The deploy service against a RunPod built from RunPod's published contracts
(tests/fakes/runpod): the servicer over real gRPC, the supervisor driven pass by pass with a
controlled clock. Every test ends with the fake's check: no request, answer or read of a field
outside RunPod's documents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common import bearer, ids
from services.common.blobstore import BlobInfo
from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.server import ServerSpec, start
from services.deploy import service
from services.deploy.providers.runpod import RunPodProvider
from services.deploy.settings import DeploySettings
from services.deploy.states import State
from services.deploy.store import Change, Deployment
from tests.conftest import INTERNAL_TOKEN, STORAGES
from tests.contract.conftest import Clock, Datasets, Storage, rpc_error, stored
from tests.fakes.runpod import FakeRunPod
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deploy_service_pb2_grpc as api_grpc
from tunelab.deploy.v1 import deployments_pb2 as pb

GPU = "NVIDIA A100 80GB PCIe"
CHAT = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> str:
    """Where the outputs (and the fixture's dataset) are stored: local, but for the tests that
    store outputs (ON_EACH_STORAGE), which run on S3 too. The others store no byte of their own,
    and the datasets service has its storage contract (test_datasets_service.py) on both."""
    return str(getattr(request, "param", "local"))


ON_EACH_STORAGE = pytest.mark.parametrize("storage", STORAGES, indirect=True)


@pytest.fixture
def runpod() -> Iterator[FakeRunPod]:
    with FakeRunPod() as fake, fake.strict_reading():
        yield fake
        fake.check()


@dataclass
class Deploy:
    stub: api_grpc.DeployServiceAsyncStub
    parts: service.Parts
    clock: Clock
    fake: FakeRunPod
    datasets: Datasets
    dataset_id: str
    restart: Callable[[], service.Parts]
    storage: Storage

    def as_(self, user: str | None = None) -> tuple[tuple[str, bytes], ...]:
        return ((USER_KEY, (user or self.datasets.user).encode()),)

    def spec(self, **gpu: Any) -> api.DeploymentSpec:
        return api.DeploymentSpec(
            provider="runpod",
            dataset_id=self.dataset_id,
            method=pb.TRAINING_METHOD_SFT,
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            gpu=pb.GpuSpec(type=GPU, count=1, **gpu),
            limits=pb.Limits(max_runtime_minutes=120, max_cost_usd=20),
        )

    async def create(
        self, spec: api.DeploymentSpec | None = None, request_id: str = ""
    ) -> pb.Deployment:
        reply = await self.stub.CreateDeployment(
            api.CreateDeploymentRequest(deployment=spec or self.spec(), request_id=request_id),
            metadata=self.as_(),
        )
        return reply.deployment

    async def get(self, deployment_id: str) -> pb.Deployment:
        reply = await self.stub.GetDeployment(
            api.GetDeploymentRequest(deployment_id=deployment_id), metadata=self.as_()
        )
        return reply.deployment

    async def tick(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        await self.parts.supervisor.tick()

    async def stored_outputs(self) -> list[BlobInfo]:
        """The outputs' blobs, listed through the service's own store (either backend)."""
        return await stored(self.parts.outputs)

    async def unfinished_outputs(self) -> list[str]:
        return await self.storage.unfinished_uploads(self.parts.outputs)

    async def send_output(
        self, deployment_id: str, job_token: str, data: bytes
    ) -> api.UploadOutputResponse:
        async def messages() -> AsyncIterator[api.UploadOutputRequest]:
            yield api.UploadOutputRequest(deployment_id=deployment_id, job_token=job_token)
            for start_at in range(0, len(data), 65536):
                yield api.UploadOutputRequest(chunk=data[start_at : start_at + 65536])

        return await self.stub.UploadOutput(messages(), timeout=60)


@pytest.fixture
async def deploy(
    datasets: Datasets,
    runpod: FakeRunPod,
    empty_db_url: str,
    tmp_path: Path,
    blob_storage: Storage,
) -> AsyncIterator[Deploy]:
    settings = DeploySettings(
        database_url=empty_db_url,
        internal_token=INTERNAL_TOKEN,
        keys_kek=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        # A public address: pods on the internet must be able to call back.
        public_url="https://1.1.1.1",
        datasets_address=datasets.address,
        local_work_dir=tmp_path / "pods",
        output_dir=tmp_path / "outputs",
        max_output_bytes=1 << 20,
        supervise_interval_seconds=10,
        **blob_storage.settings("outputs"),
    )
    db = Database(settings.database_url)
    await service.MIGRATIONS.upgrade(db)
    clock = Clock()

    def client(key: str) -> RunPodProvider:
        async def no_wait(seconds: float) -> None:
            return None

        return RunPodProvider(
            key, rest_url=runpod.url, graphql_url=runpod.graphql_url, timeout=2, sleep=no_wait
        )

    def restart() -> service.Parts:
        """A new deploy service over the same database: nothing carried over in memory."""
        return service.assemble(settings, db, clock=clock, runpod=client)

    parts = restart()
    running = await start(
        ServerSpec(
            name="deploy",
            domain=service.DOMAIN,
            address="127.0.0.1:0",
            internal_token=INTERNAL_TOKEN,
            register=lambda server: api_grpc.add_DeployServiceServicer_to_server(
                parts.servicer, server
            ),
            service_names=[service.SERVICE_NAME],
            startup=[parts.outputs.start],
            shutdown=[parts.outputs.close],
        )
    )
    channel = open_channel(f"127.0.0.1:{running.port}", INTERNAL_TOKEN)
    stub = api_grpc.DeployServiceStub(channel)
    uploaded = await datasets.upload(CHAT * 20)
    await stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="runpod", api_key=runpod.api_key),
        metadata=datasets.as_(),
    )
    try:
        yield Deploy(
            stub, parts, clock, runpod, datasets, uploaded.dataset.id, restart, blob_storage
        )
    finally:
        await channel.close()
        await running.stop()
        await parts.datasets.close()
        await db.close()


async def test_create_rents_one_named_pod_and_follows_it(deploy: Deploy) -> None:
    check = await deploy.stub.PreflightDeployment(
        api.PreflightDeploymentRequest(deployment=deploy.spec()), metadata=deploy.as_()
    )
    assert check.ok, check.checks
    assert check.estimate.hourly_usd > 0
    created = await deploy.create()
    assert created.state == pb.DEPLOYMENT_STATE_PENDING
    await deploy.tick()
    pods = deploy.fake.live_pods(f"tunelab-{created.id}")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["cloud"] == "SECURE"
    assert pod["env"]["TUNELAB_JOB_TOKEN"].startswith("tljb_")
    assert pod["env"]["TUNELAB_GPU_COUNT"] == "1"
    assert pod["env"]["TUNELAB_DATASET_URL"].startswith(
        "https://tunelab.example/v1/dataset-downloads/tldl_"
    )
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_PROVISIONING
    assert d.pod_id == pod["id"]
    assert d.hourly_usd == pytest.approx(pod["cost"])
    deploy.fake.set_status(pod["id"], "RUNNING")
    await deploy.tick(60)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_STARTING
    assert d.cost_usd == pytest.approx(pod["cost"] / 60, rel=0.01)
    (create,) = [r.json for r in deploy.fake.requests if (r.method, r.path) == ("POST", "/v2/pods")]
    assert create["gpu"]["minCudaVersion"] == DeploySettings().pod_min_cuda_version


async def test_spot_pods_are_rented_through_graphql_with_a_bid(deploy: Deploy) -> None:
    created = await deploy.create(deploy.spec(spot=True, bid_per_gpu_usd=1.5))
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    assert deploy.fake.spot_bid(pod["id"]) == pytest.approx(1.5)
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    assert any(", spot)" in e.message for e in events.events)  # from our record: v2 never says


@pytest.mark.parametrize(
    ("change", "code"),
    [("exit", "BOOTSTRAP_FAILED"), ("ERROR", "POD_FAILED"), ("remove", "POD_VANISHED")],
)
async def test_a_pod_that_stops_on_its_own_fails_the_run(
    deploy: Deploy, change: str, code: str
) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    deploy.fake.set_status(pod_id, "RUNNING")
    await deploy.tick(5)
    hf_token = "plain-secret-of-no-known-shape-123456"  # masked as the run's own secret
    await deploy.stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="huggingface", api_key=hf_token), metadata=deploy.as_()
    )
    deploy.fake.logs[pod_id] = [
        f"login with {hf_token}",
        "Traceback (most recent call last):",
        "CUDA error: no device",
    ]
    if change == "exit":
        deploy.fake.exit(pod_id)
    elif change == "remove":
        deploy.fake.remove(pod_id)
    else:
        deploy.fake.set_status(pod_id, change)
    await deploy.tick(5)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_FAILED
    assert d.error.code == code
    if change != "remove":  # RunPod tells no reason: the container's last lines do
        assert list(d.error.log_tail)[-1:] == ["CUDA error: no device"]
        assert d.error.log_tail[0] == "login with [REDACTED]"
    assert deploy.fake.live_pods(f"tunelab-{created.id}") == []
    await no_secrets_left(deploy, created.id)


@pytest.mark.parametrize(
    ("seconds", "code"),
    [(120 * 60, "MAX_RUNTIME"), (11 * 60, "HEARTBEAT_TIMEOUT")],
)
async def test_limits_terminate_the_pod(deploy: Deploy, seconds: float, code: str) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    deploy.fake.set_status(pod_id, "RUNNING")
    await deploy.tick(1)
    await deploy.tick(seconds)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_FAILED
    assert d.error.code == code
    assert deploy.fake.pods[pod_id]["status"] == "TERMINATED"


async def test_the_cost_limit_stops_the_run_one_pass_before_it_is_crossed(
    deploy: Deploy,
) -> None:
    spec = deploy.spec()
    spec.limits.max_cost_usd = 0.5
    spec.limits.heartbeat_timeout_minutes = 120  # a silent pod: only the cost may stop it
    created = await deploy.create(spec)
    await deploy.tick()
    d = await deploy.get(created.id)
    deploy.fake.set_status(d.pod_id, "RUNNING")
    per_pass = d.hourly_usd * 10 / 3600  # passes are 10 s apart
    while (d := await deploy.get(created.id)).state != pb.DEPLOYMENT_STATE_FAILED:
        assert d.cost_usd + per_pass < 0.5 + 1e-9  # live only while the next pass stays below
        await deploy.tick(10)
    assert d.error.code == "MAX_COST"
    assert 0.5 - 2 * per_pass <= d.cost_usd <= 0.5
    assert deploy.fake.pods[d.pod_id]["status"] == "TERMINATED"


async def no_secrets_left(deploy: Deploy, deployment_id: str) -> None:
    """Once its pod is gone a run keeps no secret: no job token, no copy of the key."""
    d = await deploy.parts.store.get_any(deployment_id)
    assert d is not None
    assert d.job_token_ciphertext is None
    assert d.provider_key_ciphertext is None


async def test_cancel_terminates_the_pod_at_once(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    reply = await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    assert reply.deployment.state == pb.DEPLOYMENT_STATE_CANCELLED
    assert deploy.fake.live_pods(f"tunelab-{created.id}") == []
    await no_secrets_left(deploy, created.id)


async def test_a_pod_rented_while_its_run_was_cancelled_is_found_and_terminated(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    key = await deploy.parts.store.key_ciphertext(deploy.datasets.user, "runpod")

    def asked_for(current: Any) -> Any:
        change = Change(provider_key_ciphertext=key)
        change.become(current.state, State.PROVISIONING, "asking runpod for a pod")
        return change

    # The create is in flight (its answer not recorded) when the owner cancels, then deletes
    # the key: the pod must still be found, with the run's copy of the key, and terminated.
    await deploy.parts.store.mutate(created.id, deploy.clock(), asked_for)
    made = deploy.fake.add_pod(f"tunelab-{created.id}", status="STARTING")
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    await deploy.stub.DeleteProviderKey(
        api.DeleteProviderKeyRequest(provider="runpod"), metadata=deploy.as_()
    )
    await deploy.tick()
    assert deploy.fake.pods[made]["status"] == "TERMINATED"
    await no_secrets_left(deploy, created.id)


async def test_create_that_answers_500_after_renting_leaves_exactly_one_pod(deploy: Deploy) -> None:
    created = await deploy.create()
    deploy.fake.fail_next_create_after_creating(500)
    await deploy.tick()
    await deploy.tick(10)
    pods = deploy.fake.live_pods(f"tunelab-{created.id}")
    assert len(pods) == 1
    assert (await deploy.get(created.id)).pod_id == pods[0]["id"]


async def test_a_retried_create_rents_nothing_new(deploy: Deploy) -> None:
    first = await deploy.create(request_id="req-1")
    second = await deploy.create(request_id="req-1")
    assert second.id == first.id
    await deploy.tick()
    await deploy.tick(10)
    assert len(deploy.fake.live_pods()) == 1
    other = deploy.spec()
    other.limits.max_cost_usd = 3
    error = await rpc_error(deploy.create(other, request_id="req-1"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "different request" in (error.details() or "")


async def test_the_sweep_terminates_pods_no_live_run_owns(deploy: Deploy) -> None:
    live = await deploy.create()
    done = await deploy.create()
    await deploy.tick()
    finished_pod = (await deploy.get(done.id)).pod_id
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=done.id), metadata=deploy.as_()
    )
    stray = deploy.fake.add_pod(f"tunelab-{ids.new_id('dep')}", status="RUNNING")
    twin = deploy.fake.add_pod(f"tunelab-{live.id}", status="RUNNING")  # a duplicate
    foreign = deploy.fake.add_pod("someone-elses-pod", status="RUNNING")
    terminated = await deploy.parts.supervisor.sweep()
    assert terminated == 2
    assert deploy.fake.pods[stray]["status"] == "TERMINATED"
    assert deploy.fake.pods[twin]["status"] == "TERMINATED"
    assert deploy.fake.pods[foreign]["status"] == "RUNNING"
    assert deploy.fake.pods[finished_pod]["status"] == "TERMINATED"
    live_pod = (await deploy.get(live.id)).pod_id
    assert deploy.fake.pods[live_pod]["status"] != "TERMINATED"


async def test_keys_are_masked_refused_when_wrong_and_never_logged(
    deploy: Deploy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = await deploy.stub.ListProviderKeys(api.ListProviderKeysRequest(), metadata=deploy.as_())
    (key,) = keys.provider_keys
    assert key.provider == "runpod"
    assert key.last4 == deploy.fake.api_key[-4:]
    assert deploy.fake.api_key not in str(keys)
    created = await deploy.create()
    await deploy.tick()
    await deploy.tick(30)
    # A key RunPod refuses fails the pre-flight with a message that says what to do.
    await deploy.stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="runpod", api_key="rpa_" + "W" * 40),
        metadata=deploy.as_(),
    )
    check = await deploy.stub.PreflightDeployment(
        api.PreflightDeploymentRequest(deployment=deploy.spec()), metadata=deploy.as_()
    )
    assert not check.ok
    assert any("provider-keys/runpod" in c.message for c in check.checks)
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert deploy.fake.api_key not in text
    assert "rpa_" + "W" * 40 not in text
    # Deleting the key mid-run: the run keeps the copy its pod was rented with, so the pod
    # can still be terminated (and stop billing).
    await deploy.stub.DeleteProviderKey(
        api.DeleteProviderKeyRequest(provider="runpod"), metadata=deploy.as_()
    )
    pod_id = (await deploy.get(created.id)).pod_id
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    assert deploy.fake.pods[pod_id]["status"] == "TERMINATED"
    error = await rpc_error(deploy.create())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PUT /v1/provider-keys/runpod" in (error.details() or "")


async def test_a_restarted_supervisor_carries_on_from_the_database(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    deploy.fake.set_status(pod_id, "RUNNING")
    again = deploy.restart()
    await again.supervisor.tick()  # the first supervisor's lease still holds: nothing happens
    assert (await again.store.get(deploy.datasets.user, created.id)).state.value == "provisioning"
    deploy.clock.advance(31)  # the lease lapses (the old one is gone)
    await again.supervisor.tick()
    assert len(deploy.fake.live_pods()) == 1
    d = await again.store.get(deploy.datasets.user, created.id)
    assert d.state.value == "starting"
    deploy.clock.advance(121 * 60)
    await again.supervisor.tick()
    assert deploy.fake.pods[pod_id]["status"] == "TERMINATED"
    await again.datasets.close()


async def test_of_two_replicas_supervising_together_one_acts(
    deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deploy replicas over one database (a Deployment of 2): their supervisors pass
    together, and only the lease holder's steps a run; once it is gone and its lease lapsed,
    the other carries on, and the first, back too late, does nothing."""
    runs = [await deploy.create() for _ in range(3)]
    replicas = [deploy.parts, deploy.restart()]
    acted: list[str] = []
    for replica in replicas:
        supervisor = replica.supervisor

        async def step(
            d: Deployment,
            step: Callable[[Deployment], Awaitable[None]] = supervisor.step,
            holder: str = supervisor.holder,
        ) -> None:
            acted.append(holder)
            await step(d)

        monkeypatch.setattr(supervisor, "step", step)
    first, second = (r.supervisor for r in replicas)
    try:
        for _ in range(4):  # a pass every 5 s: the lease (30 s) is renewed, never lost
            await asyncio.gather(first.tick(), second.tick())
            deploy.clock.advance(5)
        assert len(set(acted)) == 1
        leader, follower = (first, second) if acted[0] == first.holder else (second, first)
        rented = [r for r in deploy.fake.requests if (r.method, r.path) == ("POST", "/v2/pods")]
        assert len(rented) == len(runs)
        for run in runs:
            (pod,) = deploy.fake.live_pods(f"tunelab-{run.id}")
            deploy.fake.set_status(pod["id"], "RUNNING")
        deploy.clock.advance(31)  # the leader is gone: its lease lapses
        before = len(acted)
        await follower.tick()
        await leader.tick()  # back, but the lease is the other's now
        assert acted[before:] == [follower.holder] * len(runs)
        assert {(await deploy.get(run.id)).state for run in runs} == {pb.DEPLOYMENT_STATE_STARTING}
        assert len(deploy.fake.live_pods()) == len(runs)
    finally:
        await replicas[1].datasets.close()


async def test_a_pod_rented_just_before_a_crash_is_adopted_not_rented_again(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    store = deploy.parts.store

    def asked_for(current: Any) -> Any:
        change = Change()
        change.become(current.state, State.PROVISIONING, "asking runpod for a pod")
        return change

    # The service recorded "provisioning", RunPod made the pod, then the service died.
    await store.mutate(created.id, deploy.clock(), asked_for)
    made = deploy.fake.add_pod(f"tunelab-{created.id}", status="STARTING")
    again = deploy.restart()
    await again.supervisor.tick()
    assert [p["id"] for p in deploy.fake.live_pods()] == [made]
    assert (await deploy.get(created.id)).pod_id == made
    await again.datasets.close()


async def test_reports_are_checked_stored_and_end_the_run(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    token = pod["env"]["TUNELAB_JOB_TOKEN"]
    download = pod["env"]["TUNELAB_DATASET_URL"].rsplit("/", 1)[1]

    async def report(**fields: Any) -> api.ReportDeploymentResponse:
        return await deploy.stub.ReportDeployment(
            api.ReportDeploymentRequest(
                deployment_id=created.id, job_token=token, report=api.Report(**fields)
            )
        )

    reply = await report(
        phase=api.REPORT_PHASE_TRAINING,
        progress=pb.Progress(step=3, total_steps=10, loss=float("nan"), learning_rate=0.1),
    )
    assert reply.state == pb.DEPLOYMENT_STATE_TRAINING
    assert not reply.stop
    d = await deploy.get(created.id)
    assert d.progress.step == 3
    assert d.progress.learning_rate == pytest.approx(0.1)
    assert d.progress.loss == 0  # a NaN is left out, not stored
    too_long = await rpc_error(report(phase=api.REPORT_PHASE_TRAINING, log_tail=["x"] * 101))
    assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_phase = await rpc_error(report())
    assert no_phase.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await rpc_error(report(phase=42))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await deploy.get(created.id)).state == pb.DEPLOYMENT_STATE_TRAINING

    reply = await report(
        phase=api.REPORT_PHASE_FAILED,
        exit_code=137,
        message="training failed",
        log_tail=["loading", f"GET https://x/v1/dataset-downloads/{download} 403", "Killed"],
    )
    assert reply.state == pb.DEPLOYMENT_STATE_FAILED
    assert reply.stop
    d = await deploy.get(created.id)
    assert d.error.code == "TRAINER_FAILED"
    assert d.error.exit_code == 137
    assert d.error.log_tail[-1] == "Killed"
    assert download not in " ".join(d.error.log_tail)  # a token in the log is masked
    await deploy.tick()
    assert deploy.fake.pods[pod["id"]]["status"] == "TERMINATED"
    await no_secrets_left(deploy, created.id)
    dead = await rpc_error(report(phase=api.REPORT_PHASE_TRAINING))
    assert dead.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("reason", "code"),
    [("gpu_unavailable", "GPU_UNAVAILABLE"), ("torch_mismatch", "TORCH_MISMATCH")],
)
async def test_a_failure_the_pod_can_name_is_the_runs_error_code(
    deploy: Deploy, reason: str, code: str
) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")

    async def report(**fields: Any) -> api.ReportDeploymentResponse:
        return await deploy.stub.ReportDeployment(
            api.ReportDeploymentRequest(
                deployment_id=created.id,
                job_token=pod["env"]["TUNELAB_JOB_TOKEN"],
                report=api.Report(**fields),
            )
        )

    misplaced = await rpc_error(report(phase=api.REPORT_PHASE_STARTING, reason=reason))
    assert misplaced.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await rpc_error(report(phase=api.REPORT_PHASE_FAILED, reason="cosmic_rays"))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpu_unavailable, torch_mismatch" in (unknown.details() or "")
    reply = await report(
        phase=api.REPORT_PHASE_FAILED, exit_code=6, reason=reason, message=f"{reason}: ..."
    )
    assert reply.stop
    d = await deploy.get(created.id)
    assert (d.state, d.error.code) == (pb.DEPLOYMENT_STATE_FAILED, code)
    await deploy.tick()
    assert deploy.fake.live_pods() == []  # it stopped billing at once


async def test_a_run_that_reports_before_its_pod_is_recorded_is_still_supervised(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    secret = "tljb_" + "R" * 43

    def asked_for(current: Any) -> Any:
        change = Change(job_token_hash=bearer.digest(secret))
        change.become(current.state, State.PROVISIONING, "asking runpod for a pod")
        return change

    # The pod was made and reports, but its id was never recorded (the answer was lost).
    await deploy.parts.store.mutate(created.id, deploy.clock(), asked_for)
    made = deploy.fake.add_pod(f"tunelab-{created.id}", status="RUNNING")
    await deploy.stub.ReportDeployment(
        api.ReportDeploymentRequest(
            deployment_id=created.id,
            job_token=secret,
            report=api.Report(phase=api.REPORT_PHASE_TRAINING),
        )
    )
    await deploy.tick()
    assert (await deploy.get(created.id)).pod_id == made
    await deploy.tick(121 * 60)
    assert deploy.fake.pods[made]["status"] == "TERMINATED"


async def test_the_sweep_spares_pods_of_other_users_sharing_the_account_and_other_names(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    await deploy.stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="runpod", api_key=deploy.fake.api_key),
        metadata=deploy.as_("bob"),
    )
    spared = [
        deploy.fake.add_pod(name, status="RUNNING")
        for name in (
            "tunelab-staging-dep_" + "a" * 26,  # another installation's prefix
            "tunelab-dev",  # a user's own pod
            f"tunelab-{created.id}-debug",  # like ours, but not one of our names
            "tunelab-dep_short",
        )
    ]
    assert await deploy.parts.supervisor.sweep() == 0
    for pod in spared:
        assert deploy.fake.pods[pod]["status"] == "RUNNING"
    assert deploy.fake.pods[pod_id]["status"] != "TERMINATED"


async def test_a_transient_refusal_is_retried_until_the_provisioning_deadline(
    deploy: Deploy,
) -> None:
    deploy.fake.set_capacity(GPU, 0)
    created = await deploy.create()
    await deploy.tick()
    await deploy.tick(60)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_PROVISIONING
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    assert [e.kind for e in events.events].count("provider_error") == 1  # logged once
    deploy.fake.set_capacity(GPU, 8)
    await deploy.tick(60)
    assert len(deploy.fake.live_pods(f"tunelab-{created.id}")) == 1
    # Without capacity until the deadline, the run fails, renting nothing.
    deploy.fake.set_capacity(GPU, 0)
    late = await deploy.create()
    await deploy.tick()
    await deploy.tick(31 * 60)
    d = await deploy.get(late.id)
    assert d.state == pb.DEPLOYMENT_STATE_FAILED
    assert d.error.code == "PROVIDER_REFUSED"
    assert "no pod after 30 minutes" in d.error.message
    assert deploy.fake.live_pods(f"tunelab-{late.id}") == []


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("balance", "insufficient balance: add funds to the RunPod account"),
        ("pool", f"the RunPod account may not rent {GPU} (access denied)"),
    ],
)
async def test_a_refusal_no_retry_can_mend_fails_the_run_at_once(
    deploy: Deploy, fault: str, says: str
) -> None:
    if fault == "balance":
        deploy.fake.balance_usd = 0.10  # less than one hour of the pod
    else:
        deploy.fake.deny_pool(GPU)
    created = await deploy.create()
    await deploy.tick()
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_FAILED  # at once, not after 30 minutes of retries
    assert d.error.code == "PROVIDER_REFUSED"
    assert says in d.error.message
    posts = [r for r in deploy.fake.requests if (r.method, r.path) == ("POST", "/v2/pods")]
    assert len(posts) == 1
    assert deploy.fake.live_pods() == []
    await deploy.tick(10)  # looks once more for a pod of its name, then forgets the secrets
    await no_secrets_left(deploy, created.id)


async def test_an_unknown_state_filter_is_invalid(deploy: Deploy) -> None:
    error = await rpc_error(
        deploy.stub.ListDeployments(api.ListDeploymentsRequest(state=99), metadata=deploy.as_())  # type: ignore[arg-type]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_hugging_face_token_reaches_the_pod_and_only_the_pod(
    deploy: Deploy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    check = await deploy.stub.PreflightDeployment(
        api.PreflightDeploymentRequest(deployment=deploy.spec()), metadata=deploy.as_()
    )
    status = {c.name: c.status for c in check.checks}
    assert status["huggingface_token"] == pb.CHECK_STATUS_WARN
    assert check.ok  # a warning does not stop the run
    token = "hf_" + "T0k3n" * 8
    await deploy.stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="huggingface", api_key=token), metadata=deploy.as_()
    )
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    assert pod["env"]["HF_TOKEN"] == token
    keys = await deploy.stub.ListProviderKeys(api.ListProviderKeysRequest(), metadata=deploy.as_())
    assert {k.provider: k.last4 for k in keys.provider_keys}["huggingface"] == token[-4:]
    assert token not in caplog.text + str(keys)


@ON_EACH_STORAGE
async def test_the_output_is_sent_once_with_the_job_token_and_replaced_by_a_resend(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    token = pod["env"]["TUNELAB_JOB_TOKEN"]

    async def send(data: bytes, job_token: str = token) -> api.UploadOutputResponse:
        return await deploy.send_output(created.id, job_token, data)

    first = await send(b"first model" * 1000)
    assert first.output.size_bytes == 11000
    second = await send(b"second model")
    assert second.output.sha256 == hashlib.sha256(b"second model").hexdigest()
    assert len(await deploy.stored_outputs()) == 1  # the first one is gone
    chunks = [
        m
        async for m in deploy.stub.DownloadOutput(
            api.DownloadOutputRequest(deployment_id=created.id), metadata=deploy.as_(), timeout=60
        )
    ]
    assert chunks[0].output.size_bytes == len(b"second model")
    assert b"".join(m.chunk for m in chunks[1:]) == b"second model"
    stolen = deploy.stub.DownloadOutput(
        api.DownloadOutputRequest(deployment_id=created.id),
        metadata=deploy.as_("eve"),
        timeout=60,
    )
    other = await rpc_error(stolen.read())
    assert other.code() == grpc.StatusCode.NOT_FOUND

    too_big = await rpc_error(send(b"x" * ((1 << 20) + 1)))
    assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(await deploy.stored_outputs()) == 1
    assert await deploy.unfinished_outputs() == []
    forged = await rpc_error(send(b"model", "tljb_" + "F" * 43))
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    late = await rpc_error(send(b"late model"))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


@ON_EACH_STORAGE
async def test_delete_output_removes_the_record_and_the_bytes_for_its_owner_only(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    await deploy.send_output(created.id, pod["env"]["TUNELAB_JOB_TOKEN"], b"model" * 1000)
    assert len(await deploy.stored_outputs()) == 1

    def delete(user: str | None = None) -> Any:
        return deploy.stub.DeleteOutput(
            api.DeleteOutputRequest(deployment_id=created.id), metadata=deploy.as_(user)
        )

    async def download() -> list[api.DownloadOutputResponse]:
        call = deploy.stub.DownloadOutput(
            api.DownloadOutputRequest(deployment_id=created.id), metadata=deploy.as_(), timeout=60
        )
        return [m async for m in call]

    stolen = await rpc_error(delete("eve"))
    assert stolen.code() == grpc.StatusCode.NOT_FOUND
    assert len(await deploy.stored_outputs()) == 1  # another user's call left it alone
    kept = await download()
    assert b"".join(m.chunk for m in kept[1:]) == b"model" * 1000

    await delete()
    assert await deploy.stored_outputs() == []
    assert not (await deploy.get(created.id)).HasField("output")
    gone = await rpc_error(download())
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    again = await rpc_error(delete())
    assert again.code() == grpc.StatusCode.NOT_FOUND
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    assert "output_deleted" in [e.kind for e in events.events]


@ON_EACH_STORAGE
async def test_a_pod_that_sent_its_output_and_exited_cleanly_succeeded(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")

    async def messages() -> AsyncIterator[api.UploadOutputRequest]:
        yield api.UploadOutputRequest(
            deployment_id=created.id, job_token=pod["env"]["TUNELAB_JOB_TOKEN"]
        )
        yield api.UploadOutputRequest(chunk=b"adapter")

    await deploy.stub.UploadOutput(messages(), timeout=60)
    deploy.fake.exit(pod["id"])  # and its "succeeded" report never arrived
    await deploy.tick(5)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_SUCCEEDED
    assert not d.HasField("error")
    assert deploy.fake.pods[pod["id"]]["status"] == "TERMINATED"


async def test_the_bill_is_read_after_the_run_and_again_until_it_settles(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    deploy.fake.set_status(pod_id, "RUNNING")
    await deploy.tick(600)
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    await deploy.tick(60)
    d = await deploy.get(created.id)
    assert d.state == pb.DEPLOYMENT_STATE_CANCELLED
    assert not d.HasField("billed_usd")  # RunPod has no record of it yet

    def bills() -> list[str]:
        return [r.query for r in deploy.fake.requests if r.path == "/v2/billing/pods"]

    deploy.fake.billed[pod_id] = 0.3712
    await deploy.tick(31 * 60)
    d = await deploy.get(created.id)
    assert d.billed_usd == pytest.approx(0.3712)
    assert d.cost_usd == pytest.approx(1.64 * 10 / 60, abs=1e-5)  # our estimate stays
    assert all(f"podId={pod_id}" in query for query in bills())

    deploy.fake.billed[pod_id] = 0.4022  # RunPod settled late
    await deploy.tick(10 * 60)
    assert (await deploy.get(created.id)).billed_usd == pytest.approx(0.3712)  # not due yet
    await deploy.tick(21 * 60)
    assert (await deploy.get(created.id)).billed_usd == pytest.approx(0.4022)
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    billed = [e.message for e in events.events if e.kind == "billed"]
    assert billed == [
        f"runpod billed $0.37 for pod {pod_id} (estimated ${d.cost_usd:.2f})",
        f"runpod billed $0.40 for pod {pod_id} (estimated ${d.cost_usd:.2f})",
    ]

    read = len(bills())
    await deploy.tick(25 * 3600)  # settled: never read again
    await deploy.tick(31 * 60)
    assert len(bills()) == read


async def test_a_bill_that_cannot_be_read_is_tried_again_later(deploy: Deploy) -> None:
    created = await deploy.create()
    await deploy.tick()
    pod_id = (await deploy.get(created.id)).pod_id
    await deploy.stub.CancelDeployment(
        api.CancelDeploymentRequest(deployment_id=created.id), metadata=deploy.as_()
    )
    deploy.fake.billed[pod_id] = 0.05
    deploy.fake.fail_next(1, status=403, only="GET /v2/billing")  # a key without billing access
    await deploy.tick(60)
    assert not (await deploy.get(created.id)).HasField("billed_usd")
    for _ in range(5):  # a refusal is not asked again each pass: once a period
        await deploy.tick(120)
    assert len([r for r in deploy.fake.requests if r.path == "/v2/billing/pods"]) == 1
    assert not (await deploy.get(created.id)).HasField("billed_usd")
    await deploy.tick(31 * 60)
    assert (await deploy.get(created.id)).billed_usd == pytest.approx(0.05)


async def test_gpu_types_are_priced_for_the_count_with_stock_and_cuda(deploy: Deploy) -> None:
    deploy.fake.set_capacity("NVIDIA RTX A6000", 0)
    reply = await deploy.stub.ListGpuTypes(
        api.ListGpuTypesRequest(provider="runpod", gpu_count=2), metadata=deploy.as_()
    )
    types = {t.id: t for t in reply.gpu_types}
    a100 = types[GPU]
    assert a100.secure_usd == pytest.approx(3.28)
    assert a100.community_usd == pytest.approx(2.38)
    assert a100.secure_spot_usd == pytest.approx(1.64)  # GraphQL's spot price, times two
    assert (a100.HasField("available"), a100.available) == (True, True)
    assert list(a100.cuda_versions) == ["12.2", "12.4", "12.8"]
    assert types["NVIDIA RTX A6000"].available is False

    deploy.fake.fail_next(1, status=403, only="GET /v2/catalog")  # a key that may not read it
    denied = await rpc_error(
        deploy.stub.ListGpuTypes(api.ListGpuTypesRequest(provider="runpod"), metadata=deploy.as_())
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "read and write access to pods" in (denied.details() or "")


async def test_the_preflight_reads_runpods_hosts_cuda_and_stock(deploy: Deploy) -> None:
    async def checks(gpu_type: str = GPU, **gpu: Any) -> dict[str, pb.PreflightCheck]:
        spec = deploy.spec(**gpu)
        spec.gpu.type = gpu_type
        reply = await deploy.stub.PreflightDeployment(
            api.PreflightDeploymentRequest(deployment=spec), metadata=deploy.as_()
        )
        return {c.name: c for c in reply.checks}

    fits = (await checks())["gpu_hosts"]
    assert fits.status == pb.CHECK_STATUS_PASS
    assert "CUDA 12.8 or newer" in fits.message

    old = (await checks("NVIDIA GeForce RTX 4090"))["gpu_hosts"]  # hosts: CUDA 12.1, 12.2
    assert old.status == pb.CHECK_STATUS_FAIL
    assert "runs CUDA 12.8 or newer" in old.message
    assert "NVIDIA GeForce RTX 4090: 12.1, 12.2" in old.message

    mixed = await checks("NVIDIA GeForce RTX 4090", fallback_types=[GPU])
    assert mixed["gpu_hosts"].status == pb.CHECK_STATUS_WARN
    assert (
        "not rented (hosts below CUDA 12.8): NVIDIA GeForce RTX 4090" in mixed["gpu_hosts"].message
    )

    deploy.fake.set_capacity(GPU, 0)
    busy = await checks()
    assert busy["gpu_hosts"].status == pb.CHECK_STATUS_WARN
    assert f"RunPod has no {GPU} free now" in busy["gpu_hosts"].message
    assert "spot" not in busy

    spot = await checks(spot=True)
    assert spot["spot"].status == pb.CHECK_STATUS_WARN
    assert "retires in early 2027" in spot["spot"].message


@ON_EACH_STORAGE
async def test_a_pod_restarted_after_sending_its_output_does_not_train_again(
    deploy: Deploy,
) -> None:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    token = pod["env"]["TUNELAB_JOB_TOKEN"]

    async def messages() -> AsyncIterator[api.UploadOutputRequest]:
        yield api.UploadOutputRequest(deployment_id=created.id, job_token=token)
        yield api.UploadOutputRequest(chunk=b"adapter")

    await deploy.stub.UploadOutput(messages(), timeout=60)
    # The container died before its final report; RunPod started it again.
    reply = await deploy.stub.ReportDeployment(
        api.ReportDeploymentRequest(
            deployment_id=created.id,
            job_token=token,
            report=api.Report(phase=api.REPORT_PHASE_STARTING),
        )
    )
    assert (reply.state, reply.stop) == (pb.DEPLOYMENT_STATE_SUCCEEDED, True)
    d = await deploy.get(created.id)
    assert d.output.size_bytes == len(b"adapter")
    await deploy.tick()
    assert deploy.fake.live_pods() == []


async def test_a_pod_placed_on_a_host_too_old_for_the_image_is_stopped_at_once(
    deploy: Deploy,
) -> None:
    # A spot pod cannot ask for hosts by CUDA version: RunPod may place it on any A100 host
    # (they run CUDA 12.2, 12.4 and 12.8).
    created = await deploy.create(deploy.spec(spot=True))
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    pod["cudaVersion"] = "12.2"
    await deploy.tick(10)
    d = await deploy.get(created.id)
    assert (d.state, d.error.code) == (pb.DEPLOYMENT_STATE_FAILED, "GPU_UNAVAILABLE")
    assert "the pod's host runs CUDA 12.2, older than the 12.8 the image needs" in d.error.message
    assert deploy.fake.live_pods() == []


@pytest.mark.parametrize(
    ("code", "answer"),
    [
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
async def test_a_create_the_datasets_service_cannot_check_is_a_503_to_retry(
    deploy: Deploy,
    monkeypatch: pytest.MonkeyPatch,
    code: grpc.StatusCode,
    answer: grpc.StatusCode,
) -> None:
    """The datasets service away (or its name not resolving yet, as seen in containers right
    after a start) is not the request's fault: UNAVAILABLE, which clients retry; a refusal
    from it stays a failed pre-flight. Nothing is rented either way."""

    async def away(owner: str, dataset_id: str) -> None:
        raise grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), "DNS query cancelled"
        )

    monkeypatch.setattr(deploy.parts.servicer.preflight.datasets, "get", away)
    refused = await rpc_error(deploy.create())
    assert refused.code() == answer
    assert "nothing was rented" in (refused.details() or "")
    assert "the datasets service could not be asked" in (refused.details() or "")
    listed = await deploy.stub.ListDeployments(api.ListDeploymentsRequest(), metadata=deploy.as_())
    assert list(listed.deployments) == []
    monkeypatch.undo()
    assert (await deploy.create()).state == pb.DEPLOYMENT_STATE_PENDING
