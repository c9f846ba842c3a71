"""A run's log over real gRPC, on both databases: the pod pushes numbered lines with its job
token, its owner reads them (and follows them while the run goes on), sanitized and bounded."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.contract import test_deploy_runpod
from tests.contract.conftest import rpc_error
from tests.contract.test_deploy_runpod import Deploy
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb

# The deploy service against the fake RunPod, as test_deploy_runpod.py has it.
deploy = test_deploy_runpod.deploy
runpod = test_deploy_runpod.runpod
storage = test_deploy_runpod.storage  # local: a run's log is no stored blob


class Run:
    """A run whose pod was rented, and what its pod and its owner can do with its log."""

    def __init__(self, deploy: Deploy, deployment: pb.Deployment, pod: dict[str, object]) -> None:
        self.deploy = deploy
        self.id = deployment.id
        env = pod["env"]
        assert isinstance(env, dict)
        self.token: str = env["TUNELAB_JOB_TOKEN"]
        self.dataset_url: str = env["TUNELAB_DATASET_URL"]

    async def push(
        self, first_line: int, *lines: str, token: str | None = None, deployment_id: str = ""
    ) -> api.AppendDeploymentLogsResponse:
        return await self.deploy.stub.AppendDeploymentLogs(
            api.AppendDeploymentLogsRequest(
                deployment_id=deployment_id or self.id,
                job_token=self.token if token is None else token,
                batch=api.LogBatch(first_line=first_line, lines=list(lines)),
            )
        )

    def stream(
        self, *, follow: bool = False, after: int = 0, user: str | None = None
    ) -> grpc.aio.UnaryStreamCall[
        api.StreamDeploymentLogsRequest, api.StreamDeploymentLogsResponse
    ]:
        return self.deploy.stub.StreamDeploymentLogs(
            api.StreamDeploymentLogsRequest(
                deployment_id=self.id, follow=follow, after_sequence=after
            ),
            metadata=self.deploy.as_(user),
            timeout=30,
        )

    async def read(self, after: int = 0) -> list[api.StreamDeploymentLogsResponse]:
        return [message async for message in self.stream(after=after)]

    async def lines(self, after: int = 0) -> list[tuple[int, str]]:
        return [(line.sequence, line.text) for m in await self.read(after) for line in m.lines]

    async def end(self, phase: api.ReportPhase.ValueType = api.REPORT_PHASE_SUCCEEDED) -> None:
        await self.deploy.stub.ReportDeployment(
            api.ReportDeploymentRequest(
                deployment_id=self.id, job_token=self.token, report=api.Report(phase=phase)
            )
        )


async def rented(deploy: Deploy) -> Run:
    created = await deploy.create()
    await deploy.tick()
    (pod,) = deploy.fake.live_pods(f"tunelab-{created.id}")
    return Run(deploy, created, pod)


async def test_lines_are_kept_once_in_order_and_shown_to_their_owner_only(deploy: Deploy) -> None:
    run = await rented(deploy)
    assert await run.read() == [api.StreamDeploymentLogsResponse()]  # one message, no lines
    assert (await run.push(1, "one", "two", "three")).last_line == 3
    # The same batch again (its answer was lost), overlapping the next: each line kept once.
    assert (await run.push(2, "two", "three", "four")).last_line == 4
    assert (await run.push(1, "one")).last_line == 4
    assert await run.lines() == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
    assert await run.lines(after=2) == [(3, "three"), (4, "four")]
    assert await run.lines(after=4) == []
    (message,) = await run.read()
    assert message.lines[0].time.seconds == int(deploy.clock().timestamp())

    # Keyset pages: 450 more lines come in messages of at most 200, each line once, in order.
    await run.push(5, *(f"line {n}" for n in range(5, 455)))
    messages = await run.read(after=3)
    assert [len(m.lines) for m in messages] == [200, 200, 51]
    sequences = [line.sequence for m in messages for line in m.lines]
    assert sequences == list(range(4, 455))

    for user in ("eve", None):
        if user is None:
            stranger = deploy.stub.StreamDeploymentLogs(
                api.StreamDeploymentLogsRequest(deployment_id="dep_" + "a" * 26),
                metadata=deploy.as_(),
                timeout=30,
            )
        else:
            stranger = run.stream(user=user)
        error = await rpc_error(stranger.read())
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "one" not in (error.details() or "")
    negative = await rpc_error(run.stream(after=-1).read())
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_runs_live_job_token_appends_and_a_refusal_stores_nothing(
    deploy: Deploy,
) -> None:
    run = await rented(deploy)
    other = await rented(deploy)
    for token, deployment_id in (
        ("tljb_" + "F" * 43, ""),  # made up
        ("", ""),  # none
        (other.token, ""),  # another run's
        (run.token, "dep_" + "b" * 26),  # no such run
    ):
        error = await rpc_error(run.push(1, "forged", token=token, deployment_id=deployment_id))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert run.token not in (error.details() or "")
    # Checked after the token: no number, too many lines, numbers past the end.
    for first, count in ((0, 1), (1, 501), (2**31 - 1, 2)):
        error = await rpc_error(run.push(first, *["x"] * count))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await run.lines() == []

    await run.push(1, "last words")
    await run.end()
    late = await rpc_error(run.push(2, "too late"))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await run.lines() == [(1, "last words")]


async def test_credentials_never_reach_a_reader(deploy: Deploy) -> None:
    hf_token = "hf_" + "S3cr3t" * 6
    await deploy.stub.SetProviderKey(
        api.SetProviderKeyRequest(provider="huggingface", api_key=hf_token), metadata=deploy.as_()
    )
    run = await rented(deploy)
    download_token = run.dataset_url.rsplit("/", 1)[1]
    secrets = [run.token, hf_token, deploy.fake.api_key, download_token, "abcDEF123456789xyz"]
    await run.push(
        1,
        f"export TUNELAB_JOB_TOKEN={run.token}",
        f"huggingface-cli login --token {hf_token}",
        f"RUNPOD_API_KEY={deploy.fake.api_key} runpodctl pod stop",
        f"curl {run.dataset_url}",
        "> GET /v1/models HTTP/1.1",
        "> Authorization: Bearer abcDEF123456789xyz",
        "-----BEGIN RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA7tnfP3z0rQ1SrandomKeyMaterialThatMustNotBeShownToAnyone",
        "c2VjcmV0IGtleSBtYXRlcmlhbCBtdXN0IG5vdCBsZWFr",
        "-----END RSA PRIVATE KEY-----",
        "\x1b[31mred\x1b[0m and a NUL \x00 and a bell \x07",
        "plain text stays",
    )
    lines = dict(await run.lines())
    shown = "\n".join(lines.values())
    for secret in secrets:
        assert secret not in shown
    assert "SrandomKeyMaterial" not in shown
    assert "c2VjcmV0IGtleSBt" not in shown
    assert lines[1] == "export TUNELAB_JOB_TOKEN=[REDACTED]"
    assert lines[6].startswith("> Authorization: Bearer [REDACTED]")
    assert lines[11] == "red and a NUL \ufffd and a bell \ufffd"
    assert lines[12] == "plain text stays"
    assert run.dataset_url.rsplit("/", 1)[0] in lines[4]  # the link is shown, not its token


async def test_a_flood_and_huge_lines_are_bounded(deploy: Deploy) -> None:
    run = await rented(deploy)
    deploy.parts.servicer.logs.max_lines = 100
    await run.push(1, "x" * 100_000, *(f"line {n}" for n in range(2, 61)))
    assert (await run.lines())[0] == (1, "x" * 1000)  # cut
    for start in range(61, 400, 60):
        await run.push(start, *(f"line {n}" for n in range(start, start + 60)))
    messages = await run.read()
    kept = [line.sequence for m in messages for line in m.lines]
    assert kept == list(range(321, 421))
    assert messages[0].missing == 320
    events = await deploy.stub.ListDeploymentEvents(
        api.ListDeploymentEventsRequest(deployment_id=run.id), metadata=deploy.as_()
    )
    truncated = [e for e in events.events if e.kind == "log_truncated"]
    assert len(truncated) == 1  # said once, when it began
    assert "newest 100" in truncated[0].message
    # A reader resuming from a line since dropped learns how many it missed.
    resumed = await run.read(after=200)
    assert resumed[0].missing == 120
    assert resumed[0].lines[0].sequence == 321


async def test_a_follow_sends_new_lines_as_they_come_and_ends_with_the_run(
    deploy: Deploy,
) -> None:
    run = await rented(deploy)
    await run.push(1, "before")
    received: asyncio.Queue[api.StreamDeploymentLogsResponse | None] = asyncio.Queue()

    async def follow() -> None:
        async for message in run.stream(follow=True):
            await received.put(message)
        await received.put(None)

    follower = asyncio.create_task(follow())
    first = await asyncio.wait_for(received.get(), 5)
    assert first is not None
    assert [line.text for line in first.lines] == ["before"]
    started = asyncio.get_running_loop().time()
    await run.push(2, "while training")
    woken = await asyncio.wait_for(received.get(), 5)
    assert woken is not None
    assert [(line.sequence, line.text) for line in woken.lines] == [(2, "while training")]
    assert asyncio.get_running_loop().time() - started < 0.5  # woken, not polled
    # The last lines and the end arrive together: the follow sends them, then ends.
    await run.push(3, "the end", "really")
    await run.end(api.REPORT_PHASE_FAILED)
    rest: list[str] = []
    while (message := await asyncio.wait_for(received.get(), 5)) is not None:
        rest += [line.text for line in message.lines]
    assert rest == ["the end", "really"]
    await follower


async def test_a_follow_ends_after_its_time_and_is_resumed_where_it_stopped(
    deploy: Deploy,
) -> None:
    run = await rented(deploy)
    deploy.parts.servicer.logs.follow_seconds = 0.5
    await run.push(1, "one", "two")
    started = asyncio.get_running_loop().time()
    got = [line.sequence async for m in run.stream(follow=True) for line in m.lines]
    assert got == [1, 2]
    assert 0.4 < asyncio.get_running_loop().time() - started < 5
    await run.push(3, "three")
    resumed = [line.sequence async for m in run.stream(follow=True, after=2) for line in m.lines]
    assert resumed == [3]


@pytest.mark.parametrize("phase", [api.REPORT_PHASE_SUCCEEDED, api.REPORT_PHASE_FAILED])
async def test_a_follow_of_a_finished_run_sends_everything_and_ends(
    deploy: Deploy, phase: api.ReportPhase.ValueType
) -> None:
    run = await rented(deploy)
    await run.push(1, *(f"line {n}" for n in range(1, 301)))
    await run.end(phase)
    got = [line.sequence async for m in run.stream(follow=True) for line in m.lines]
    assert got == list(range(1, 301))
