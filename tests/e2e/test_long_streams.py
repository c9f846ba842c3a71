"""Streams that last longer than a unary call may: a watch, an export and a download through
the gateway, with the gateway's unary deadline shortened to 1.5 s and the deploy service ending
each watch after 4 s (both settings), so that what takes an hour in production takes seconds
here."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from services.common.client import open_channel
from services.common.identity import USER_KEY
from tests.conftest import PgDatabases
from tests.e2e.conftest import Suite, paired_suite, wait_for
from tests.e2e.test_cli_deploy import cli
from tests.e2e.test_deploy_local import TERMINAL, chat_rows, request, upload, wait_until
from tunelab.tracing.v1 import spans_pb2, tracing_service_pb2
from tunelab.tracing.v1 import tracing_service_pb2_grpc as tracing_grpc

pytestmark = pytest.mark.e2e

CALL_SECONDS = 1.5
WATCH_SECONDS = 4


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def short(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> Iterator[Suite]:
    with paired_suite(
        request,
        tmp_path_factory,
        pg,
        TUNELAB_GATEWAY_CALL_TIMEOUT_SECONDS=str(CALL_SECONDS),
        TUNELAB_DEPLOY_WATCH_MAX_SECONDS=str(WATCH_SECONDS),
    ) as running:
        yield running


def frames(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Each server-sent event as {"id", "event", "data"}; keepalive comments skipped."""
    frame: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in frame:
                yield frame
            frame = {}
        elif line.startswith("id:"):
            frame["id"] = line[3:].strip()
        elif line.startswith("event:"):
            frame["event"] = line[6:].strip()
        elif line.startswith("data:"):
            frame["data"] = json.loads(line[5:])


def long_run(suite: Suite) -> tuple[httpx.Client, str]:
    alice = suite.client("alice")
    dataset_id = upload(alice, "long.jsonl", chat_rows(30))
    created = alice.post("/v1/deployments", json=request(dataset_id, max_steps=10_000_000))
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    wait_until(alice, deployment_id, {"training"})
    return alice, deployment_id


def test_a_watch_outlives_the_unary_deadline_and_resumes_where_it_ended(short: Suite) -> None:
    alice, deployment_id = long_run(short)
    url = f"/v1/deployments/{deployment_id}/watch"
    started = time.monotonic()
    with alice.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200
        first = list(frames(response))
    lasted = time.monotonic() - started
    # The service's own limit ended it, cleanly: no error frame, well past the unary deadline.
    assert WATCH_SECONDS - 0.5 < lasted < WATCH_SECONDS + 5
    assert all(f.get("event") == "message" for f in first)
    last_id = [f["id"] for f in first if "id" in f][-1]
    seen = [e["sequence"] for f in first for e in f["data"]["events"]]
    assert int(last_id) == max(seen)

    # A reconnecting EventSource sends Last-Event-ID: nothing already seen comes again.
    canceller = threading.Timer(1.0, alice.post, (f"/v1/deployments/{deployment_id}/cancel",))
    canceller.start()
    with alice.stream("GET", url, headers={"Last-Event-ID": last_id}, timeout=30) as response:
        rest = list(frames(response))
    canceller.join()
    again = [e["sequence"] for f in rest for e in f["data"]["events"]]
    assert again
    assert min(again) > int(last_id)
    assert rest[-1]["data"]["deployment"]["state"] == "cancelled"
    assert all(f.get("event") == "message" for f in rest)


def test_cli_watch_reconnects_until_the_run_ends(short: Suite) -> None:
    alice, deployment_id = long_run(short)
    canceller = threading.Timer(
        WATCH_SECONDS * 2 + 1, alice.post, (f"/v1/deployments/{deployment_id}/cancel",)
    )
    canceller.start()
    watched = cli(short, "deploy", "watch", deployment_id, timeout=90)
    canceller.join()
    assert watched.returncode == 1, watched.stderr  # cancelled: the run's outcome, not the watch's
    assert f"{deployment_id} cancelled" in watched.stderr
    assert "reconnecting" in watched.stderr
    assert "watch failed" not in watched.stderr
    assert "gave up" not in watched.stderr
    assert wait_until(alice, deployment_id, TERMINAL)["state"] == "cancelled"


def ingest_directly(suite: Suite, count: int, text_bytes: int) -> None:
    """Spans straight to the tracing service (the gateway's 1.5 s deadline is for the test)."""

    async def run() -> None:
        channel = open_channel(
            suite.env["TUNELAB_TRACING_GRPC_ADDRESS"], suite.env["TUNELAB_INTERNAL_TOKEN"]
        )
        stub = tracing_grpc.TracingServiceStub(channel)
        text = "x" * text_bytes
        started = timestamp_pb2.Timestamp(seconds=1_795_000_000)
        for start in range(0, count, 1000):
            spans = [
                spans_pb2.Span(
                    trace_id=f"long-{i // 10}",
                    span_id=f"s{i}",
                    name="chat",
                    timing=spans_pb2.Timing(start_time=started),
                    output=struct_pb2.Value(string_value=text),
                )
                for i in range(start, min(start + 1000, count))
            ]
            reply = await stub.IngestSpans(
                tracing_service_pb2.IngestSpansRequest(spans=spans),
                metadata=((USER_KEY, b"alice"),),
                timeout=120,
            )
            assert reply.accepted == len(spans), reply
        await channel.close()

    asyncio.run(run())


class SmallWindow(http.client.HTTPConnection):
    """A client with a small receive buffer: reading slowly holds the sender back at once."""

    def connect(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.sock.connect((self.host, self.port))


def read_slowly(
    suite: Suite, path: str, pause: float, headers: dict[str, str] | None = None
) -> tuple[bytes, float]:
    """GET `path` through a small receive window, 64 KiB at a time with `pause` seconds between:
    the body, and how long reading it took."""
    port = int(suite.url.rsplit(":", 1)[1])
    connection = SmallWindow("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        assert response.status == 200
        started = time.monotonic()
        body = bytearray()
        while chunk := response.read(64 * 1024):
            body += chunk
            time.sleep(pause)
        return bytes(body), time.monotonic() - started
    finally:
        connection.close()


def test_an_export_read_slowly_outlives_the_unary_deadline(short: Suite) -> None:
    count = 6000
    ingest_directly(short, count, text_bytes=1500)
    token = short.token("alice")
    body, lasted = read_slowly(
        short,
        "/v1/traces/export?format=jsonl",
        0.05,  # about 1.3 MB/s
        {"Authorization": f"Bearer {token}"},
    )
    assert lasted > CALL_SECONDS * 2
    ids = {json.loads(line)["span_id"] for line in body.splitlines()}
    assert ids == {f"s{i}" for i in range(count)}


def test_a_download_read_slowly_outlives_the_unary_deadline_and_is_audited_whole(
    short: Suite,
) -> None:
    """A download is granted in one unary call and then streamed for as long as the client
    takes (here about four times the gateway's call deadline): it arrives whole, and its audit
    record, reported once it ended, holds every byte."""
    alice = short.client("alice")
    row = chat_rows(1).removesuffix(b"}\n")  # each row made unique by a field of its own
    data = b"".join(row + f', "n": "{i:06d}"}}\n'.encode() for i in range(40_000))
    uploaded = alice.post("/v1/datasets", params={"name": "slow.jsonl"}, content=data)
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["id"]
    minted = alice.post(f"/v1/datasets/{dataset_id}/download-tokens", json={})
    assert minted.status_code == 201, minted.text
    short.remember(minted.json()["token"])
    body, lasted = read_slowly(short, minted.json()["url"].removeprefix(short.url), 0.1)
    assert lasted > CALL_SECONDS * 3
    assert body == data

    def reported() -> list[dict[str, Any]]:
        events = alice.get(f"/v1/datasets/{dataset_id}/download-events").json()
        return [e for e in events["download_events"] if "bytes_sent" in e]

    [event] = wait_for(reported, 10, "the download's report")
    assert (event["outcome"], int(event["bytes_sent"])) == ("granted", len(data))
    print(f"\na {len(data) / 1e6:.1f} MB download read over {lasted:.1f} s arrived whole")
