"""Abuse limits at the gateway, with the limits turned down so that a test reaches them: 429,
Retry-After and the JSON error body past each, and nobody else affected."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import PgDatabases
from tests.e2e.conftest import Suite, suite_on
from tests.e2e.test_deploy_local import chat_rows, request, upload, wait_until

pytestmark = pytest.mark.e2e

RATE = 5
PUBLIC = 20  # the pods of the test below report from 127.0.0.1 under this limit too


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> Iterator[Suite]:
    with suite_on(
        request.param,
        tmp_path_factory,
        pg,
        TUNELAB_GATEWAY_PUBLIC_RATE_LIMIT=f"{PUBLIC}/minute",
        TUNELAB_GATEWAY_PUBLIC_REFUSED_RATE_LIMIT="3/minute",
        TUNELAB_GATEWAY_USER_RATE_LIMIT=f"{RATE}/minute",
        TUNELAB_GATEWAY_MAX_STREAMS_PER_USER="2",
    ) as running:
        yield running


def assert_limited(reply: httpx.Response) -> int:
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["reason"] == "RATE_LIMITED"
    wait = int(reply.headers["Retry-After"])
    assert 1 <= wait <= 60
    return wait


def test_public_routes_are_limited_per_client_address(limited: Suite) -> None:
    alice = limited.client("alice")
    dataset_id = upload(alice, "public.jsonl", chat_rows(5))
    link = alice.post(f"/v1/datasets/{dataset_id}/download-tokens", json={"max_uses": 100})
    url = link.json()["url"].removeprefix(limited.url)
    # Clients behind a trusted proxy, told apart by X-Forwarded-For (as uvicorn reads it).
    pod = httpx.Client(base_url=limited.url, headers={"X-Forwarded-For": "203.0.113.1"})
    for _ in range(PUBLIC):
        assert pod.head(url).status_code == 200
    assert_limited(pod.get(url))
    neighbour = httpx.Client(base_url=limited.url, headers={"X-Forwarded-For": "203.0.113.2"})
    assert neighbour.head(url).status_code == 200  # another address counts alone


def test_refused_tokens_are_limited_much_sooner(limited: Suite) -> None:
    guesser = httpx.Client(base_url=limited.url, headers={"X-Forwarded-For": "198.51.100.9"})
    assert guesser.get("/v1/dataset-downloads/tlk_guess1").status_code == 404
    assert guesser.post("/v1/deployments/dep_x/reports", json={}).status_code == 401
    forged = {"Authorization": "Bearer tljb_" + "A" * 43}
    assert guesser.put("/v1/deployments/dep_x/output", headers=forged).status_code == 401
    # Three refusals, on any public route: the next request is not even looked at.
    assert_limited(guesser.get("/v1/dataset-downloads/tlk_guess2"))
    assert_limited(guesser.post("/v1/deployments/dep_x/reports", json={}))
    honest = httpx.Client(base_url=limited.url, headers={"X-Forwarded-For": "198.51.100.10"})
    assert honest.get("/v1/dataset-downloads/tlk_guess3").status_code == 404


def test_expensive_routes_are_limited_per_user(limited: Suite) -> None:
    bob, carol = limited.client("bob"), limited.client("carol")
    for _ in range(RATE):
        assert bob.get("/v1/traces/analytics").status_code == 200
    assert_limited(bob.get("/v1/traces/analytics"))
    assert carol.get("/v1/traces/analytics").status_code == 200  # each user counts alone
    assert bob.get("/v1/traces").status_code == 200  # a cheap route is not limited
    export = bob.get("/v1/traces/export")
    assert export.status_code == 200  # each route counts alone


def test_a_user_holds_at_most_max_streams_open(limited: Suite) -> None:
    dave = limited.client("dave")
    dataset_id = upload(dave, "streams.jsonl", chat_rows(20))
    created = dave.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    deployment_id = created.json()["id"]
    wait_until(dave, deployment_id, {"training"})
    url = f"/v1/deployments/{deployment_id}/watch"
    with dave.stream("GET", url) as first, dave.stream("GET", url) as second:
        assert (first.status_code, second.status_code) == (200, 200)
        assert_limited(dave.get(url))
        # Another user is not held back by dave's streams.
        assert limited.client("erin").get(url).status_code == 404
    # Closed streams give their slots back.
    dave.post(f"/v1/deployments/{deployment_id}/cancel")
    with dave.stream("GET", url) as again:
        assert again.status_code == 200
