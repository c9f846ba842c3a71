"""Object storage failing and coming back, seen through the gateway with real processes: the
suite on S3 on a SeaweedFS of the test's own, killed in the middle of an upload and started
again; and `tunelab dev --s3` (make run-s3) from start to Ctrl-C.

(That the gateway holds no storage configuration at all, and still serves downloads on either
backend, is test_datasets_http.py's test_the_gateway_serves_downloads_with_no_storage_...)
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.config import Config

from tests.conftest import PgDatabases
from tests.e2e import processes
from tests.e2e.conftest import Suite, suite_on_s3, wait_for
from tests.e2e.test_dev_supervisor import dev
from tunelab_cli.seaweed import SeaweedFS

pytestmark = pytest.mark.e2e

MIB = 1024**2
ROW = json.dumps(
    {"messages": [{"role": "user", "content": "q" * 40}, {"role": "assistant", "content": "a"}]}
).encode()
# About 1 MiB of whole rows, sent 64 times: eight 8 MiB parts of a multipart upload.
CHUNK = b"".join(ROW[:-1] + f', "n": "{i:05d}"}}\n'.encode() for i in range(MIB // (len(ROW) + 14)))
CHUNKS = 64
KILL_AFTER = 20  # chunks: two parts are stored, the rest is on its way
# What a crashed upload leaves in the bucket (an unfinished multipart upload) is swept after
# this long, every half second: longer than the upload takes to reach the kill.
STALE_SECONDS = 8


def assert_storage_down(response: httpx.Response) -> None:
    """A 503 to retry: the JSON error body, the reason, and when to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["status"], error["reason"]) == ("UNAVAILABLE", "STORAGE_UNAVAILABLE")
    assert int(response.headers["retry-after"]) > 0


@pytest.fixture
def s3_suite(
    private_s3_server: SeaweedFS, tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases
) -> Iterator[Suite]:
    with suite_on_s3(
        private_s3_server,
        "sqlite",
        tmp_path_factory,
        pg,
        TUNELAB_DATASETS_MAX_UPLOAD_BYTES=str(2 * CHUNKS * MIB),
        TUNELAB_DATASETS_STALE_UPLOAD_HOURS=str(STALE_SECONDS / 3600),
        TUNELAB_DATASETS_PURGE_INTERVAL_SECONDS="0.5",
    ) as suite:
        yield suite


def test_storage_killed_mid_upload_is_a_503_and_service_resumes_when_it_is_back(
    s3_suite: Suite, private_s3_server: SeaweedFS
) -> None:
    """SeaweedFS is killed while a 64 MiB upload streams through the gateway: the client gets
    a 503 to retry, nothing is kept, and while storage is away what needs only the database
    works and a download is a 503 that uses nothing. Once it is back, the same processes (none
    restarted) store and serve bytes again, and what the killed upload left in the bucket is
    swept."""
    suite, server = s3_suite, private_s3_server
    alice = suite.client("alice")
    kept = ROW + b"\n" + ROW + b"\n"
    before = alice.post("/v1/datasets", params={"name": "kept.jsonl"}, content=kept)
    assert before.status_code == 201, before.text
    kept_id = before.json()["id"]
    [kept_blob] = suite.blobs()
    single = alice.post(f"/v1/datasets/{kept_id}/download-tokens", json={"max_uses": 1}).json()
    suite.remember(single["token"])
    warm = alice.post(f"/v1/datasets/{kept_id}/download-tokens", json={"max_uses": 2}).json()
    suite.remember(warm["token"])
    # The gateway now holds a connection to the S3 server, which the kill will break.
    assert httpx.get(warm["url"], timeout=30).content == kept

    killed = threading.Event()

    def body() -> Iterator[bytes]:
        for index in range(CHUNKS):
            if index == KILL_AFTER:
                # Once the service's multipart upload is under way: a crash, not a shutdown.
                wait_for(suite.unfinished_uploads, 30, "the multipart upload to begin")
                server.stop(grace_seconds=0)
                killed.set()
            yield CHUNK

    started = time.monotonic()
    cut = alice.post("/v1/datasets", params={"name": "cut.jsonl"}, content=body(), timeout=60)
    answered = time.monotonic() - started
    assert killed.is_set()
    assert_storage_down(cut)
    assert answered < 60
    print(f"\nS3 killed mid-upload: 503 after {answered:.1f} s")
    listed = alice.get("/v1/datasets").json()["datasets"]
    assert [d["id"] for d in listed] == [kept_id]

    # Storage is away: the records are still there, and tokens are minted.
    assert alice.get(f"/v1/datasets/{kept_id}").json()["name"] == "kept.jsonl"
    other = alice.post(f"/v1/datasets/{kept_id}/download-tokens", json={"max_uses": 1})
    assert other.status_code == 201, other.text
    suite.remember(other.json()["token"])
    refused = httpx.get(single["url"], timeout=30)
    assert_storage_down(refused)
    assert ROW not in refused.content
    [token] = [
        t
        for t in alice.get(f"/v1/datasets/{kept_id}/download-tokens").json()["download_tokens"]
        if t["id"] == single["token_id"]
    ]
    assert int(token.get("use_count", 0)) == 0
    events = alice.get(f"/v1/datasets/{kept_id}/download-events").json()["download_events"]
    refusals = [(e["outcome"], e["reason"]) for e in events if e["token_id"] == token["id"]]
    assert refusals == [("refused", "STORAGE_UNAVAILABLE")]

    server.start()  # the same ports, credentials and data
    # The killed upload could not be aborted while the server was away: its multipart upload
    # stayed in the bucket until housekeeping swept it (once older than STALE_SECONDS). It
    # made no object.
    assert "could not remove an aborted upload; housekeeping will" in suite_log(suite, "datasets")
    wait_for(
        lambda: '"partial_uploads": 1' in suite_log(suite, "datasets"),
        30,
        "housekeeping to sweep the unfinished upload",
    )
    assert suite.unfinished_uploads() == []
    assert suite.blobs() == [kept_blob]

    # Back, with no process restarted: the single use was never taken, and new bytes go in.
    again = httpx.get(single["url"], timeout=30)
    assert (again.status_code, again.content) == (200, kept)
    assert httpx.get(single["url"], timeout=30).status_code == 403  # and now it is
    fresh = b"".join(CHUNK.splitlines(keepends=True)[:5000])
    stored = alice.post("/v1/datasets", params={"name": "after.jsonl"}, content=fresh)
    assert stored.status_code == 201, stored.text
    link = alice.post(f"/v1/datasets/{stored.json()['id']}/download-tokens", json={}).json()
    suite.remember(link["token"])
    served = httpx.get(link["url"], timeout=30)
    assert (served.status_code, served.content) == (200, fresh)
    assert httpx.get(warm["url"], timeout=30).content == kept  # over a new connection
    assert len(suite.blobs()) == 2
    logs = suite.logs()
    assert "upload refused: storage unavailable" in logs
    assert "Traceback" not in suite_log(suite, "gateway")


def suite_log(suite: Suite, name: str) -> str:
    return (suite.var / f"{name}.log").read_text(errors="replace")


def test_tunelab_dev_s3_keeps_datasets_in_seaweedfs_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """make run-s3: `tunelab dev --s3` starts SeaweedFS under var/, the suite stores datasets
    in its bucket "tunelab" under datasets/, and Ctrl-C stops everything, weed included."""
    with dev(tmp_path, "--s3", TUNELAB_TRACING_INGEST_WORKERS="0") as running:
        endpoint = re.search(r"^S3: (http://[\d.:]+), bucket tunelab ", running.output(), re.M)
        assert endpoint is not None, running.output()
        port = int(endpoint.group(1).rsplit(":", 1)[1])
        [weed] = [
            p
            for p in processes.tree(running.pid)
            if " server " in processes.command(p[0]) and "weed" in processes.command(p[0])
        ]
        alice = running.client("alice")
        content = CHUNK[: 200 * 1024]
        uploaded = alice.post("/v1/datasets", params={"name": "dev.jsonl"}, content=content)
        assert uploaded.status_code == 201, uploaded.text
        link = alice.post(f"/v1/datasets/{uploaded.json()['id']}/download-tokens", json={})
        assert link.status_code == 201, link.text
        served = httpx.get(link.json()["url"], timeout=30)
        assert (served.status_code, served.content) == (200, content)

        config = json.loads((running.var / "seaweedfs" / "s3.json").read_text())
        [credential] = config["identities"][0]["credentials"]
        s3: Any = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint.group(1),
            region_name="us-east-1",
            aws_access_key_id=credential["accessKey"],
            aws_secret_access_key=credential["secretKey"],
            config=Config(s3={"addressing_style": "path"}),
        )
        try:
            listed = s3.list_objects_v2(Bucket="tunelab", Prefix="datasets/")
            [stored] = listed["Contents"]
            body = s3.get_object(Bucket="tunelab", Key=stored["Key"])["Body"]
            assert body.read() == content
        finally:
            s3.close()

        everything = processes.tree(running.pid)
        assert weed in everything
        assert running.interrupt() == 0
    assert processes.left_after(everything, 2) == set()
    assert not processes.running(weed)
    with pytest.raises(ConnectionRefusedError):  # nothing listens where the S3 gateway was
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
