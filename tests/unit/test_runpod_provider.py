"""The RunPod provider through its real HTTP client, against the fake RunPod server.

The fake holds both sides to RunPod's published contracts (tests/fixtures/runpod): every test
ends with `fake.check()`, which fails on a request, an answer or a read by the client that the
documents do not allow."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest

from services.deploy.providers.base import (
    GpuRequest,
    PodSpec,
    PodStatus,
    Provider,
    ProviderError,
    ProviderErrorKind,
)
from services.deploy.providers.runpod import RunPodProvider
from tests.fakes.runpod import FakeRunPod

A100 = "NVIDIA A100 80GB PCIe"
H100 = "NVIDIA H100 80GB HBM3"
A6000 = "NVIDIA RTX A6000"
JOB_TOKEN = "job-token-" + "s" * 24
DATASET_URL = "https://tunelab.example/v1/download/dlt_" + "d" * 32


def make_spec(**changes: Any) -> PodSpec:
    spec = PodSpec(
        name="dep-0001",
        image="ghcr.io/tunelab/trainer:1.2",
        gpu=GpuRequest(type=A100, count=2),
        command=["python", "-m", "trainer", "--config", "/etc/run config.yaml"],
        env={"TUNELAB_JOB_TOKEN": JOB_TOKEN, "DATASET_URL": DATASET_URL},
        disk_gb=50,
    )
    return replace(spec, **changes)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRunPod]:
    with FakeRunPod() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeRunPod) -> Iterator[FakeRunPod]:
    server.reset()
    with server.strict_reading():
        yield server
    server.check()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def new_provider(
    fake: FakeRunPod, sleeps: list[float], key: str | None = None, **options: Any
) -> RunPodProvider:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    options = {"timeout": 2.0, "max_attempts": 3, "backoff_base": 0.5} | options
    return RunPodProvider(
        key or fake.api_key, rest_url=fake.url, graphql_url=fake.graphql_url, sleep=sleep, **options
    )


@pytest.fixture
async def provider(fake: FakeRunPod, sleeps: list[float]) -> AsyncIterator[RunPodProvider]:
    runpod = new_provider(fake, sleeps)
    yield runpod
    await runpod.aclose()


def posts(fake: FakeRunPod, path: str = "/v2/pods") -> list[Any]:
    return [r.json for r in fake.requests if r.method == "POST" and r.path == path]


async def test_it_is_a_provider(fake: FakeRunPod, provider: RunPodProvider) -> None:
    runpod: Provider = provider
    assert runpod.name == "runpod"
    assert fake.api_key not in repr(provider)


async def test_create_on_demand_sends_the_documented_body(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    pod = await provider.create(make_spec(gpu=GpuRequest(type=A100, count=2, cloud="community")))

    assert posts(fake) == [
        {
            "name": "dep-0001",
            "image": "ghcr.io/tunelab/trainer:1.2",
            "gpu": {"id": A100, "count": 2},
            "cloud": "COMMUNITY",
            "env": {"TUNELAB_JOB_TOKEN": JOB_TOKEN, "DATASET_URL": DATASET_URL},
            "args": "python -m trainer --config '/etc/run config.yaml'",
            "disk": 50,
        }
    ]
    assert fake.requests[0].method == "GET"  # it looked for a pod of that name first
    assert {r.authorization for r in fake.requests} == {f"Bearer {fake.api_key}"}
    assert pod.status is PodStatus.PROVISIONING
    assert (pod.name, pod.gpu_type, pod.gpu_count, pod.spot) == ("dep-0001", A100, 2, False)
    assert pod.hourly_usd == pytest.approx(2 * 1.19)  # `cost`: the pod's price per hour
    assert fake.pods[pod.id]["cloud"] == "COMMUNITY"


async def test_the_price_is_the_pods_cost_and_the_cuda_floor_is_asked_for(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    pod = await provider.create(make_spec(min_cuda_version="12.8"))
    assert posts(fake)[0]["gpu"] == {"id": A100, "count": 2, "minCudaVersion": "12.8"}
    read = await provider.get(pod.id)
    assert read is not None
    assert read.hourly_usd == pytest.approx(fake.pods[pod.id]["cost"]) == pytest.approx(2 * 1.64)
    assert read.cuda_version == "12.8"
    assert (read.spot, read.exit_code) == (False, None)  # v2 says neither


async def test_no_host_with_a_new_enough_cuda_is_no_capacity(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    gpu = GpuRequest(type="NVIDIA GeForce RTX 4090", fallback_types=(A6000,))
    pod = await provider.create(make_spec(gpu=gpu, min_cuda_version="12.8"))
    assert pod.gpu_type == A6000  # the 4090 hosts run CUDA 12.2 at most


@pytest.mark.parametrize(("bid", "expected_bid"), [(None, 0.82), (0.9, 0.9)])
async def test_create_spot_rents_through_graphql_with_a_bid(
    fake: FakeRunPod, provider: RunPodProvider, bid: float | None, expected_bid: float
) -> None:
    gpu = GpuRequest(type=A100, count=2, spot=True, bid_per_gpu_usd=bid)
    pod = await provider.create(make_spec(gpu=gpu))

    (call,) = posts(fake, "/graphql")[-1:]
    spot_input = call["variables"]["input"]
    assert "podRentInterruptable" in call["query"]
    assert spot_input["bidPerGpu"] == expected_bid  # None bids the current secure spot price
    assert spot_input["env"] == [
        {"key": "TUNELAB_JOB_TOKEN", "value": JOB_TOKEN},
        {"key": "DATASET_URL", "value": DATASET_URL},
    ]
    assert (spot_input["gpuTypeId"], spot_input["gpuCount"], spot_input["cloudType"]) == (
        A100, 2, "SECURE"
    )  # fmt: skip
    assert posts(fake) == []  # no on-demand create
    assert pod.spot
    assert pod.status is PodStatus.PROVISIONING
    assert pod.hourly_usd == pytest.approx(2 * expected_bid)
    assert fake.spot_bid(pod.id) == expected_bid
    assert (await provider.get(pod.id)) is not None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("PROVISIONING", PodStatus.PROVISIONING),
        ("STARTING", PodStatus.STARTING),
        ("RUNNING", PodStatus.RUNNING),
        ("EXITED", PodStatus.EXITED),
        ("ERROR", PodStatus.FAILED),
        ("TERMINATED", PodStatus.TERMINATED),
        ("MIGRATING", PodStatus.PROVISIONING),
    ],
)
async def test_status_mapping(
    fake: FakeRunPod,
    provider: RunPodProvider,
    caplog: pytest.LogCaptureFixture,
    raw: str,
    status: PodStatus,
) -> None:
    pod_id = fake.add_pod("dep-0001")
    fake.set_status(pod_id, raw)
    with caplog.at_level(logging.WARNING, "services.deploy.providers.runpod"):
        pod = await provider.get(pod_id)
    assert pod is not None
    assert pod.status is status
    billing = raw in ("PROVISIONING", "STARTING", "RUNNING", "ERROR", "MIGRATING")
    assert pod.hourly_usd == pytest.approx(1.64 if billing else 0.0)  # cost: 0 once stopped
    assert pod.exit_code is None
    unknown = raw == "MIGRATING"
    assert ("MIGRATING" in pod.message) == unknown
    assert ("unrecoverable" in pod.message) == (raw == "ERROR")
    assert any("MIGRATING" in r.getMessage() for r in caplog.records) == unknown
    if unknown:  # a status the document does not list: RunPod broke its contract, not us
        assert any("MIGRATING" in v for v in fake.violations)
        fake.violations.clear()


async def test_get_of_a_gone_pod_is_none(fake: FakeRunPod, provider: RunPodProvider) -> None:
    pod_id = fake.add_pod("dep-0001")
    fake.remove(pod_id)
    assert await provider.get(pod_id) is None
    assert await provider.get("no-such-pod") is None


async def test_terminate_is_idempotent(fake: FakeRunPod, provider: RunPodProvider) -> None:
    pod = await provider.create(make_spec())
    await provider.terminate(pod.id)
    await provider.terminate(pod.id)  # RunPod answers 404 now
    await provider.terminate("no-such-pod")
    assert fake.pods[pod.id]["status"] == "TERMINATED"
    assert [r.method for r in fake.requests if r.path == f"/v2/pods/{pod.id}"] == ["DELETE"] * 2
    assert fake.capacity[A100] == 8  # the GPUs were given back


async def test_terminate_conflict_is_success_only_when_the_pod_is_gone(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    pod_id = fake.add_pod("dep-0001", status="TERMINATED")
    fake.fail_next(1, status=409, only="DELETE")
    await provider.terminate(pod_id)

    running = fake.add_pod("dep-0002", status="RUNNING")
    fake.fail_next(1, status=409, only="DELETE")
    with pytest.raises(ProviderError) as caught:
        await provider.terminate(running)
    assert caught.value.kind is ProviderErrorKind.UNAVAILABLE
    assert "running" in caught.value.message


async def test_list_pods_by_prefix(fake: FakeRunPod, provider: RunPodProvider) -> None:
    first = fake.add_pod("dep-a-1", status="RUNNING")
    second = fake.add_pod("dep-a-2", status="EXITED")
    fake.add_pod("dep-a-3", status="TERMINATED")
    fake.add_pod("other-1")
    pods = await provider.list_pods("dep-a-")
    assert sorted(p.id for p in pods) == sorted([first, second])


async def test_gpu_types_come_from_the_v2_catalog_with_spot_prices_from_graphql(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.set_capacity(A6000, 0)
    types = {t.id: t for t in await provider.gpu_types()}
    a100 = types[A100]
    assert (a100.display_name, a100.memory_gb) == ("A100 PCIe", 80)
    assert a100.price("secure", spot=False) == 1.64
    assert a100.price("community", spot=True) == 0.6
    assert (a100.available, a100.cuda_versions) == (True, ("12.2", "12.4", "12.8"))
    assert types[A6000].available is False
    rtx = types["NVIDIA GeForce RTX 4090"]
    assert rtx.community_usd is None
    assert rtx.price("community", spot=True) is None
    (catalog,) = [r for r in fake.requests if r.path == "/v2/catalog/gpus"]
    assert catalog.query == "include=AVAILABILITY&product=POD&count=1&cloud=SECURE"
    community = {t.id: t for t in await provider.gpu_types(count=8, cloud="community")}
    assert community["NVIDIA GeForce RTX 4090"].available is False  # not offered there
    assert community[A100].available is True  # 8 free
    fake.set_capacity(A100, 7)
    assert {t.id: t for t in await provider.gpu_types(count=8)}[A100].available is False


async def test_without_graphql_the_catalog_still_has_on_demand_prices(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.fail_next(5, status=503, only="POST /graphql")  # GraphQL retires in early 2027
    a100 = {t.id: t for t in await provider.gpu_types()}[A100]
    assert a100.price("secure", spot=False) == 1.64
    assert a100.price("secure", spot=True) is None


async def test_the_billed_amount_is_read_for_one_pod(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    pod = await provider.create(make_spec())
    fake.billed[pod.id] = 0.4217
    fake.billed["someone-elses"] = 9.0
    since = datetime(2026, 12, 4, 10, 17, 33, tzinfo=UTC)
    assert await provider.billed_usd(pod.id, since) == pytest.approx(0.4217)
    (billing,) = [r for r in fake.requests if r.path == "/v2/billing/pods"]
    assert parse_qs(billing.query) == {
        "podId": [pod.id],
        "bucketSize": ["hour"],
        "startTime": ["2026-12-04T10:00:00Z"],
    }


async def test_the_log_tail_is_read_from_the_stream_and_scrubbed(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    pod = await provider.create(make_spec())
    fake.logs[pod.id] = [f"line {n}" for n in range(10)] + [f"key {fake.api_key}"]
    started = time.monotonic()
    assert await provider.log_tail(pod.id, 3) == ["line 8", "line 9", "key ***"]
    assert time.monotonic() - started < 2  # it did not wait for the open stream to end
    with pytest.raises(ProviderError) as caught:
        await provider.log_tail("no-such-pod", 3)
    assert caught.value.kind is ProviderErrorKind.NOT_FOUND


async def test_a_refused_key_is_unauthenticated_and_not_quoted(
    fake: FakeRunPod, sleeps: list[float]
) -> None:
    wrong = "rpa_WRONG_" + "w" * 30
    runpod = new_provider(fake, sleeps, key=wrong)
    try:
        for call in (runpod.get("pod1"), runpod.gpu_types(), runpod.create(make_spec())):
            with pytest.raises(ProviderError) as caught:
                await call
            assert caught.value.kind is ProviderErrorKind.UNAUTHENTICATED
            assert "PUT /v1/provider-keys/runpod" in caught.value.message
            assert wrong not in str(caught.value)
            assert wrong not in repr(caught.value.__cause__)
    finally:
        await runpod.aclose()
    assert sleeps == []  # 401 is not retried
    assert not fake.pods


async def test_429_is_retried_after_retry_after(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    pod_id = fake.add_pod("dep-0001")
    fake.rate_limit_next(2, retry_after=3)
    assert await provider.get(pod_id) is not None
    assert sleeps == [3.0, 3.0]


async def test_429_honours_the_ratelimit_header(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    fake.rate_limit_next(1, retry_after=None, reset=7)
    assert await provider.list_pods("dep-") == []
    assert sleeps == [7.0]


async def test_429_forever_is_quota(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    fake.rate_limit_next(10, retry_after=2)
    with pytest.raises(ProviderError) as caught:
        await provider.get("pod1")
    assert caught.value.kind is ProviderErrorKind.QUOTA
    assert caught.value.retry_after == 2
    assert sleeps == [2.0, 2.0]  # three attempts
    assert len(fake.requests) == 3


async def test_a_long_rate_limit_is_not_waited_for(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    fake.rate_limit_next(1, retry_after=3600)
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec())
    assert (caught.value.kind, caught.value.retry_after) == (ProviderErrorKind.QUOTA, 3600)
    assert "3600 s" in caught.value.message
    assert sleeps == []
    assert len(fake.requests) == 1


async def test_503_twice_then_success(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    pod_id = fake.add_pod("dep-0001")
    fake.fail_next(2, status=503)
    assert await provider.get(pod_id) is not None
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0


async def test_503_forever_is_unavailable(fake: FakeRunPod, provider: RunPodProvider) -> None:
    fake.fail_next(5, status=503)
    with pytest.raises(ProviderError) as caught:
        await provider.terminate("pod1")
    assert caught.value.kind is ProviderErrorKind.UNAVAILABLE
    assert "try again later" in caught.value.message


async def test_a_slow_answer_is_retried_then_unavailable(
    fake: FakeRunPod, sleeps: list[float]
) -> None:
    pod_id = fake.add_pod("dep-0001")
    runpod = new_provider(fake, sleeps, timeout=0.2, max_attempts=2)
    try:
        fake.delay_next(0.6)
        assert await runpod.get(pod_id) is not None
        fake.delay_next(0.6, n=2)
        with pytest.raises(ProviderError) as caught:
            await runpod.get(pod_id)
        assert caught.value.kind is ProviderErrorKind.UNAVAILABLE
        assert "timed out" in caught.value.message
    finally:
        await runpod.aclose()


async def test_create_that_made_the_pod_then_failed_returns_that_pod(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.fail_next_create_after_creating(status=500)
    pod = await provider.create(make_spec())
    assert [p["id"] for p in fake.live_pods()] == [pod.id]
    assert len(posts(fake)) == 1


async def test_create_that_timed_out_but_landed_returns_that_pod(
    fake: FakeRunPod, sleeps: list[float]
) -> None:
    runpod = new_provider(fake, sleeps, timeout=0.3)
    try:
        fake.fail_next_create_after_creating(status=None, delay=0.6)
        pod = await runpod.create(make_spec())
    finally:
        await runpod.aclose()
    assert [p["id"] for p in fake.live_pods()] == [pod.id]


async def test_spot_create_that_failed_after_renting_returns_that_pod(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.fail_next_create_after_creating(status=502)
    pod = await provider.create(make_spec(gpu=GpuRequest(type=A100, spot=True)))
    assert [p["id"] for p in fake.live_pods()] == [pod.id]


async def test_create_that_failed_without_a_pod_is_retried(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.fail_next(2, status=503, only="POST /v2/pods")
    pod = await provider.create(make_spec())
    assert len(posts(fake)) == 3
    assert [p["id"] for p in fake.live_pods()] == [pod.id]

    fake.reset()
    fake.fail_next(3, status=500, only="POST /v2/pods")
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec())
    assert caught.value.kind is ProviderErrorKind.UNAVAILABLE
    assert "made no pod" in caught.value.message
    assert fake.live_pods() == []


async def test_a_second_create_rents_nothing_new(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    first = await provider.create(make_spec())
    second = await provider.create(make_spec())
    assert second.id == first.id
    assert len(posts(fake)) == 1


async def test_gpu_fallback_when_a_type_has_no_capacity(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.set_capacity(A100, 0)  # RunPod: 400 "There are no longer any instances available..."
    fake.set_capacity(H100, 1)  # one GPU, two wanted
    gpu = GpuRequest(type=A100, count=2, fallback_types=(H100, A6000))
    pod = await provider.create(make_spec(gpu=gpu))
    assert pod.gpu_type == A6000
    assert [body["gpu"]["id"] for body in posts(fake)] == [A100, H100, A6000]
    assert len(fake.live_pods()) == 1


async def test_spot_gpu_fallback(fake: FakeRunPod, provider: RunPodProvider) -> None:
    fake.set_capacity(A100, 0)
    gpu = GpuRequest(type="NVIDIA GeForce RTX 4090", spot=True, cloud="community")
    pod = await provider.create(make_spec(gpu=replace(gpu, fallback_types=(A100, H100))))
    assert (pod.gpu_type, pod.spot) == (H100, True)  # no community spot 4090; A100 is full


async def test_no_capacity_anywhere_names_every_type(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    for gpu in (A100, H100):
        fake.set_capacity(gpu, 0)
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec(gpu=GpuRequest(type=A100, fallback_types=(H100,))))
    assert caught.value.kind is ProviderErrorKind.NO_CAPACITY
    assert A100 in caught.value.message
    assert H100 in caught.value.message
    assert fake.live_pods() == []


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"disk_gb": 0}, "$['disk']: 0 is less than the minimum of 1"),
        ({"gpu": GpuRequest(type=A100, count=0)}, "$['gpu']['count']: 0 is less than"),
        ({"min_cuda_version": "12"}, "does not match"),
    ],
)
async def test_a_body_that_breaks_the_contract_is_invalid_at_once(
    fake: FakeRunPod, provider: RunPodProvider, changes: dict[str, Any], detail: str
) -> None:
    gpu = GpuRequest(type=A100, count=changes.pop("count", 1), fallback_types=(H100,))
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec(gpu=changes.pop("gpu", gpu), **changes))
    assert caught.value.kind is ProviderErrorKind.INVALID
    assert "Request validation failed." in caught.value.message
    assert detail in caught.value.message
    assert len(posts(fake)) == 1  # 422: never retried, no next candidate
    assert fake.violations  # our request broke the contract: that is what the fake says
    fake.violations.clear()


async def test_a_rule_broken_on_every_candidate_is_invalid_with_the_last_detail(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    gpu = GpuRequest(type="NVIDIA Imaginary 9000", fallback_types=("NVIDIA Imaginary 9001",))
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec(gpu=gpu))
    assert caught.value.kind is ProviderErrorKind.INVALID
    assert "unknown GPU type 'NVIDIA Imaginary 9001'" in caught.value.message
    assert len(posts(fake)) == 2  # 400: the next candidate was tried


async def test_a_pool_the_account_may_not_use_is_skipped(
    fake: FakeRunPod, provider: RunPodProvider
) -> None:
    fake.deny_pool(A100)
    pod = await provider.create(make_spec(gpu=GpuRequest(type=A100, fallback_types=(H100,))))
    assert pod.gpu_type == H100
    fake.deny_pool(H100)
    with pytest.raises(ProviderError) as caught:
        await provider.create(
            make_spec(name="dep-0002", gpu=GpuRequest(type=A100, fallback_types=(H100,)))
        )
    assert caught.value.kind is ProviderErrorKind.NOT_ALLOWED
    assert f"may not rent {A100}" in caught.value.message
    assert "may not rent any of the GPU types" in caught.value.message


async def test_insufficient_balance_stops_at_once(
    fake: FakeRunPod, provider: RunPodProvider, sleeps: list[float]
) -> None:
    fake.balance_usd = 0.5
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec(gpu=GpuRequest(type=A100, fallback_types=(A6000,))))
    assert caught.value.kind is ProviderErrorKind.INSUFFICIENT_BALANCE
    assert "insufficient balance" in caught.value.message
    assert "add funds" in caught.value.message
    assert len(posts(fake)) == 1  # 402: no candidate will succeed
    assert sleeps == []


async def test_a_spot_bid_too_low_is_invalid(provider: RunPodProvider) -> None:
    gpu = GpuRequest(type=A100, spot=True, bid_per_gpu_usd=0.1)
    with pytest.raises(ProviderError) as caught:
        await provider.create(make_spec(gpu=gpu))
    assert caught.value.kind is ProviderErrorKind.INVALID
    assert "below" in caught.value.message


async def test_no_secret_in_logs_or_urls(
    fake: FakeRunPod, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    secrets = [fake.api_key, JOB_TOKEN, DATASET_URL]
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "services"):
        caplog.set_level(logging.DEBUG, logger=name)
    runpod = new_provider(fake, sleeps)
    try:
        fake.rate_limit_next(1, retry_after=1)
        fake.fail_next_create_after_creating(status=500)
        pod = await runpod.create(make_spec())
        fake.set_status(pod.id, "MYSTERY")  # the unknown-status warning
        await runpod.get(pod.id)
        await runpod.list_pods("dep-")
        await runpod.create(make_spec(name="dep-0002", gpu=GpuRequest(type=A100, spot=True)))
        await runpod.terminate(pod.id)
        await runpod.terminate(pod.id)
    finally:
        await runpod.aclose()
    fake.violations.clear()  # MYSTERY is not a documented status

    assert any(r.name == "httpx" for r in caplog.records)  # the HTTP client's logs were captured
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    logged += caplog.text
    urls = "\n".join(r.url for r in fake.requests)
    for secret in secrets:
        assert secret not in logged
        assert secret not in urls
