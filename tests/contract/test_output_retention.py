"""How long runs' outputs are kept: each user's choice through the deploy service's gRPC API,
and the upkeep's retention pass (services/deploy/output_upkeep.py) deleting what is past it,
record and bytes, on both databases. Runs are real ones of the in-process deploy service over
the RunPod fake (tests/contract/test_deploy_runpod.py's fixture); its clock ages the outputs."""

from __future__ import annotations

import grpc
import pytest

from services.common.blobstore import BlobMissing
from services.common.errors import RemoteError
from services.deploy.output_upkeep import apply_retention
from tests.conftest import new_user
from tests.contract import test_deploy_runpod
from tests.contract.conftest import rpc_error
from tests.contract.test_deploy_runpod import CHAT, Deploy
from tunelab.deploy.v1 import deploy_service_pb2 as api

OPERATOR_DEFAULT_DAYS = 30

# That module's fixtures: a deploy service over the RunPod fake, with its clock.
runpod = test_deploy_runpod.runpod
deploy = test_deploy_runpod.deploy


async def get_retention(deploy: Deploy, user: str | None = None) -> tuple[int, bool]:
    reply = await deploy.stub.GetOutputRetention(
        api.GetOutputRetentionRequest(), metadata=deploy.as_(user)
    )
    return reply.retention.days, reply.retention.is_default


async def set_retention(
    deploy: Deploy, days: int = 0, *, use_default: bool = False, user: str | None = None
) -> tuple[int, bool]:
    reply = await deploy.stub.SetOutputRetention(
        api.SetOutputRetentionRequest(days=days, use_default=use_default),
        metadata=deploy.as_(user),
    )
    return reply.retention.days, reply.retention.is_default


async def test_each_user_chooses_a_retention_or_takes_the_operators(
    deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = deploy.parts.servicer
    monkeypatch.setattr(
        servicer,
        "settings",
        servicer.settings.model_copy(update={"output_retention_days": OPERATOR_DEFAULT_DAYS}),
    )
    other = new_user()
    default = (OPERATOR_DEFAULT_DAYS, True)

    assert await get_retention(deploy) == default
    assert await set_retention(deploy, 7) == (7, False)
    assert await get_retention(deploy) == (7, False)
    assert await get_retention(deploy, other) == default  # one user's choice is theirs alone
    assert await set_retention(deploy, 0) == (0, False)  # kept until deleted
    assert await get_retention(deploy) == (0, False)
    assert await set_retention(deploy, 36500) == (36500, False)
    assert await set_retention(deploy, 5, use_default=True) == default  # days is ignored then
    assert await get_retention(deploy) == default
    assert await set_retention(deploy, use_default=True) == default  # again: no choice to forget
    assert await set_retention(deploy, 3, user=other) == (3, False)
    assert await get_retention(deploy) == default
    assert await get_retention(deploy, other) == (3, False)

    for days in (-1, 36501, 40000):
        error = await rpc_error(set_retention(deploy, days))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, days
        assert RemoteError.from_rpc_error(error).metadata["field"] == "days"
        assert "days" in (error.details() or "")
    assert await get_retention(deploy) == default  # a refused choice changed nothing


async def test_retention_deletes_finished_runs_outputs_past_their_owners_choice(
    deploy: Deploy,
) -> None:
    alice = deploy.datasets.user  # keeps outputs 1 day
    bob, carol = new_user(), new_user()  # bob keeps them until deleted; carol never chose
    datasets = {alice: deploy.dataset_id}
    for user in (bob, carol):
        datasets[user] = (await deploy.datasets.upload(CHAT * 20, user=user)).dataset.id
        await deploy.stub.SetProviderKey(
            api.SetProviderKeyRequest(provider="runpod", api_key=deploy.fake.api_key),
            metadata=deploy.as_(user),
        )
    assert await set_retention(deploy, 1) == (1, False)
    assert await set_retention(deploy, 0, user=bob) == (0, False)

    async def create(user: str) -> str:
        spec = deploy.spec()
        spec.dataset_id = datasets[user]
        reply = await deploy.stub.CreateDeployment(
            api.CreateDeploymentRequest(deployment=spec), metadata=deploy.as_(user)
        )
        return reply.deployment.id

    owners = {
        "old": alice,
        "young": alice,
        "running": alice,
        "kept": bob,
        "defaulted": carol,
    }
    runs = {name: await create(user) for name, user in owners.items()}
    await deploy.tick()  # every pod rented: each run has its job token

    async def send(name: str) -> str:
        """The run's pod sends its output now; returns the output's blob key."""
        (pod,) = deploy.fake.live_pods(f"tunelab-{runs[name]}")
        await deploy.send_output(runs[name], pod["env"]["TUNELAB_JOB_TOKEN"], name.encode() * 100)
        d = await deploy.parts.store.get_any(runs[name])
        assert d is not None
        assert d.output is not None
        return d.output.blob_key

    async def finish(name: str) -> None:
        reply = await deploy.stub.CancelDeployment(
            api.CancelDeploymentRequest(deployment_id=runs[name]), metadata=deploy.as_(owners[name])
        )
        assert reply.deployment.HasField("output")  # a finished run keeps its output

    keys = {name: await send(name) for name in ("old", "running", "kept", "defaulted")}
    for name in ("old", "kept", "defaulted"):
        await finish(name)
    deploy.clock.advance(2 * 3600)
    keys["young"] = await send("young")
    await finish("young")
    # A day and an hour after the first outputs arrived: "young" arrived 23 hours ago.
    deploy.clock.advance(23 * 3600)
    blobs, store = deploy.parts.outputs, deploy.parts.store

    async def with_output() -> set[str]:
        """The runs whose record names an output."""
        found = set()
        for name, ident in runs.items():
            d = await store.get_any(ident)
            assert d is not None
            if d.output is not None:
                found.add(name)
        return found

    async def stored() -> set[str]:
        found = set()
        for name, key in keys.items():
            try:
                await blobs.stat(key)
                found.add(name)
            except BlobMissing:
                pass
        return found

    everything = set(runs)
    assert await with_output() == await stored() == everything

    # No operator default: only alice's own choice applies.
    assert await apply_retention(store, blobs, 0, deploy.clock()) == 1
    assert await with_output() == await stored() == everything - {"old"}
    gone = await rpc_error(
        deploy.stub.DownloadOutput(
            api.DownloadOutputRequest(deployment_id=runs["old"]),
            metadata=deploy.as_(),
            timeout=60,
        ).read()
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=runs["old"]), metadata=deploy.as_()
    )
    assert "output_deleted" in [e.kind for e in events.events]

    # A one-day default: carol, who never chose, gets it; bob chose to keep his.
    assert await apply_retention(store, blobs, 1, deploy.clock()) == 1
    assert await with_output() == await stored() == {"young", "running", "kept"}
    assert await apply_retention(store, blobs, 1, deploy.clock()) == 0  # nothing left to do

    # Later still, alice's young output is past her day too; her unfinished run keeps its own.
    deploy.clock.advance(2 * 3600)
    assert await apply_retention(store, blobs, 1, deploy.clock()) == 1
    assert await with_output() == await stored() == {"running", "kept"}

    # Back to the default (here 0: keep) for alice: nothing of hers expires any more.
    assert await set_retention(deploy, use_default=True) == (0, True)
    deploy.clock.advance(400 * 24 * 3600)
    assert await apply_retention(store, blobs, 0, deploy.clock()) == 0
    assert await with_output() == await stored() == {"running", "kept"}
