"""Datasets through the gateway with real processes, real HTTP and the real clients (curl, wget)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.settings import GatewaySettings
from services.common.db import Database
from tests.conftest import PgDatabases
from tests.e2e.conftest import (
    MAX_LINE,
    MAX_UPLOAD,
    Suite,
    free_port,
    needs,
    storage_setting,
    suite_on,
)

pytestmark = pytest.mark.e2e

ROW = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}]}


def sft(rows: int) -> bytes:
    return b"".join(json.dumps({**ROW, "n": i}).encode() + b"\n" for i in range(rows))


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([needs("curl"), "-sS", *args], capture_output=True, timeout=60)


def upload(suite: Suite, path: Path, user: str, name: str | None = None) -> dict[str, Any]:
    done = curl(
        "-X", "POST", "-T", str(path), "-H", f"Authorization: Bearer {suite.token(user)}",
        f"{suite.url}/v1/datasets?name={name or path.name}",
    )  # fmt: skip
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def mint(suite: Suite, user: str, dataset_id: str, **body: int) -> dict[str, Any]:
    with suite.client(user) as client:
        response = client.post(f"/v1/datasets/{dataset_id}/download-tokens", json=body)
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    suite.remember(minted["token"])
    return minted


def assert_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["reason"]) == (status, reason)
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_bytes(sft(20_000))  # about 2 MB
    return path


@pytest.mark.containers
def test_curl_upload_token_download_and_resume(suite: Suite, data: Path, tmp_path: Path) -> None:
    dataset = upload(suite, data, "alice")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert dataset["sha256"] == digest
    assert (dataset["size_bytes"], dataset["row_count"]) == (str(data.stat().st_size), "20000")
    assert dataset["format"] == "sft_chat"
    minted = mint(suite, "alice", dataset["id"], max_uses=4, ttl_seconds=600)
    assert minted["url"] == f"{suite.url}/v1/dataset-downloads/{minted['token']}"

    whole = tmp_path / "whole.jsonl"
    done = curl("-f", "-D", str(tmp_path / "headers"), "-o", str(whole), minted["url"])
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(whole.read_bytes()).hexdigest() == digest
    headers = (tmp_path / "headers").read_text().lower()
    assert f"x-checksum-sha256: {digest}" in headers
    assert f'etag: "{digest}"' in headers
    assert f"content-length: {data.stat().st_size}" in headers
    assert "accept-ranges: bytes" in headers
    expected_digest = base64.b64encode(bytes.fromhex(digest)).decode().lower()
    assert f"repr-digest: sha-256=:{expected_digest}:" in headers
    assert 'content-disposition: attachment; filename="train.jsonl"' in headers

    half = data.stat().st_size // 2
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_bytes(data.read_bytes()[:half])
    done = curl("-f", "-C", "-", "-o", str(resumed), "-w", "%{http_code}", minted["url"])
    assert done.stdout == b"206", done.stderr
    assert hashlib.sha256(resumed.read_bytes()).hexdigest() == digest

    by_wget = tmp_path / "wget.jsonl"
    by_wget.write_bytes(data.read_bytes()[: half // 3])
    done = subprocess.run(
        [needs("wget"), "-q", "-c", "-O", str(by_wget), minted["url"]],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(by_wget.read_bytes()).hexdigest() == digest

    response = httpx.get(minted["url"], headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 10-19/{data.stat().st_size}"
    assert response.content == data.read_bytes()[10:20]
    assert response.headers["x-download-uses-left"] == "0"


def interrupted_download(url: str, target: Path, keep: int) -> None:
    """Start a download and hang up after about `keep` bytes, as a dropped connection would."""
    with httpx.stream("GET", url) as response, target.open("wb") as out:
        assert response.status_code == 200
        for chunk in response.iter_raw(65536):
            out.write(chunk)
            if out.tell() >= keep:
                break


def wait_for_report(suite: Suite, user: str, dataset_id: str) -> None:
    """The gateway reports how downloads ended in the background; wait until all are in."""
    with suite.client(user) as client:
        for _ in range(100):
            events = client.get(f"/v1/datasets/{dataset_id}/download-events").json()
            if all(
                "bytes_sent" in e for e in events["download_events"] if e["bytes_granted"] != "0"
            ):
                return
            time.sleep(0.05)
    raise AssertionError("the interrupted download was never reported")


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_an_interrupted_download_resumes(suite: Suite, tmp_path: Path, client: str) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(sft(60_000))  # ~6 MB, so the hang-up comes mid-transfer
    dataset = upload(suite, big, "kate")
    minted = mint(suite, "kate", dataset["id"], max_uses=2)
    target = tmp_path / "copy.jsonl"
    interrupted_download(minted["url"], target, keep=1_000_000)
    assert 0 < target.stat().st_size < big.stat().st_size
    wait_for_report(suite, "kate", dataset["id"])
    if client == "curl":
        done = curl("-f", "-C", "-", "-o", str(target), minted["url"])
    else:
        done = subprocess.run(
            [needs("wget"), "-q", "-c", "-O", str(target), minted["url"]], capture_output=True
        )
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == dataset["sha256"]
    assert_refused(httpx.get(minted["url"], headers={"Range": "bytes=5-"}), 403, "TOKEN_USED_UP")
    wait_for_report(suite, "kate", dataset["id"])
    with suite.client("kate") as client_:
        events = client_.get(f"/v1/datasets/{dataset['id']}/download-events").json()
    granted = [e for e in events["download_events"] if e["outcome"] == "granted"]
    assert len(granted) == 2
    # The audit log shows what each attempt delivered (bytes still in socket buffers when the
    # client hung up count as sent: the server cannot tell).
    assert all(0 < int(e["bytes_sent"]) <= int(e["bytes_granted"]) for e in granted)


def test_head_checks_without_using_the_token(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "alice")
    minted = mint(suite, "alice", dataset["id"])
    head = httpx.head(minted["url"])
    assert head.status_code == 200
    assert head.headers["content-length"] == str(data.stat().st_size)
    assert head.content == b""
    assert httpx.get(minted["url"]).content == data.read_bytes()


def test_unsatisfiable_range_is_416_and_keeps_the_use(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "alice")
    minted = mint(suite, "alice", dataset["id"])
    size = data.stat().st_size
    response = httpx.get(minted["url"], headers={"Range": f"bytes={size}-"})
    assert_refused(response, 416, "RANGE_NOT_SATISFIABLE")
    assert response.headers["content-range"] == f"bytes */{size}"
    assert httpx.get(minted["url"]).status_code == 200


def test_refused_downloads_are_4xx_json_without_bytes_and_audited(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "alice")
    single = mint(suite, "alice", dataset["id"])
    assert httpx.get(single["url"]).status_code == 200
    assert_refused(httpx.get(single["url"]), 403, "TOKEN_USED_UP")

    short = mint(suite, "alice", dataset["id"], ttl_seconds=1)
    time.sleep(1.2)
    assert_refused(httpx.get(short["url"]), 403, "TOKEN_EXPIRED")

    revoked = mint(suite, "alice", dataset["id"])
    with suite.client("alice") as client:
        gone = client.delete(f"/v1/datasets/{dataset['id']}/download-tokens/{revoked['token_id']}")
    assert gone.status_code == 204
    assert_refused(httpx.get(revoked["url"]), 403, "TOKEN_REVOKED")

    made_up = suite.remember("tldl_" + "Q" * 43)
    assert_refused(httpx.get(f"{suite.url}/v1/dataset-downloads/{made_up}"), 404, "TOKEN_UNKNOWN")

    with suite.client("bob") as bob:
        assert_refused(bob.get(f"/v1/datasets/{dataset['id']}"), 404, "NOT_FOUND")
        assert_refused(bob.post(f"/v1/datasets/{dataset['id']}/download-tokens"), 404, "NOT_FOUND")
        assert_refused(bob.delete(f"/v1/datasets/{dataset['id']}"), 404, "NOT_FOUND")
        assert bob.get("/v1/datasets").json()["datasets"] == []

    with suite.client("alice") as client:
        events = client.get(f"/v1/datasets/{dataset['id']}/download-events").json()
    outcomes = [(e["outcome"], e["reason"]) for e in events["download_events"]]
    assert outcomes == [
        ("refused", "TOKEN_REVOKED"),
        ("refused", "TOKEN_EXPIRED"),
        ("refused", "TOKEN_USED_UP"),
        ("granted", ""),
    ]
    assert all(e["client_ip"] == "127.0.0.1" for e in events["download_events"])
    fingerprint = hashlib.sha256(made_up.encode()).hexdigest()[:16]
    rows = asyncio.run(
        query(
            suite,
            "SELECT outcome, reason, dataset_id FROM download_events WHERE token_fingerprint = :f",
            f=fingerprint,
        )
    )
    assert rows == [("refused", "TOKEN_UNKNOWN", None)]


async def query(suite: Suite, sql: str, **params: object) -> list[tuple[Any, ...]]:
    """Read the service's own database directly: the audit of a made-up token names no dataset,
    so no API shows it to a user; operators find it here."""
    db = Database(suite.database_url)
    try:
        async with db.session() as session:
            return [tuple(r) for r in (await session.execute(text(sql), params)).all()]
    finally:
        await db.close()


def test_concurrent_downloads_of_a_single_use_token(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "alice")
    minted = mint(suite, "alice", dataset["id"])
    statuses: list[int] = []

    def fetch() -> None:
        statuses.append(httpx.get(minted["url"], timeout=30).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 11


def _stored_blob(suite: Suite, content: bytes) -> str:
    """The name of the datasets service's blob holding exactly `content` (either backend)."""
    [blob] = [name for name in suite.blobs() if suite.blob_bytes(name) == content]
    return blob


def _uses(suite: Suite, user: str, dataset_id: str) -> int:
    with suite.client(user) as client:
        tokens = client.get(f"/v1/datasets/{dataset_id}/download-tokens").json()
    [token] = tokens["download_tokens"]
    return int(token.get("use_count", 0))


def test_a_file_gone_from_storage_is_a_clear_500_that_uses_nothing(
    suite: Suite, tmp_path: Path
) -> None:
    content = sft(50) + b'{"text": "only here: ' + str(time.time_ns()).encode() + b'"}\n'
    path = tmp_path / "lost.jsonl"
    path.write_bytes(content)
    dataset = upload(suite, path, "lena")
    minted = mint(suite, "lena", dataset["id"])  # one use
    blob = _stored_blob(suite, content)
    with suite.blob_taken_away(blob):  # the operator's disk (or bucket) lost it
        refused = httpx.get(minted["url"], timeout=30)
        assert_refused(refused, 500, "STORAGE_UNAVAILABLE")
        assert content[:20] not in refused.content
        assert "objects" not in refused.text
        assert blob.rsplit("/", 1)[-1] not in refused.text
    assert _uses(suite, "lena", dataset["id"]) == 0
    back = httpx.get(minted["url"], timeout=30)  # the one use was never taken
    assert (back.status_code, back.content) == (200, content)


def test_an_unreachable_source_is_a_503_to_retry_and_gives_the_use_back(
    tmp_path_factory: pytest.TempPathFactory, pg: PgDatabases, tmp_path: Path
) -> None:
    """The datasets service grants the download, but the URL it grants the bytes at does not
    answer (its blob listener is not where the gateway is told to look)."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with suite_on("sqlite", tmp_path_factory, pg, TUNELAB_DATASETS_BLOB_HTTP_URL=nowhere) as broken:
        path = tmp_path / "train.jsonl"
        path.write_bytes(sft(100))
        dataset = upload(broken, path, "nina")
        minted = mint(broken, "nina", dataset["id"])  # one use
        assert httpx.head(minted["url"]).status_code == 200  # fetches nothing
        for _ in range(2):  # the use came back: the second try is refused the same way
            refused = httpx.get(minted["url"], timeout=30)
            assert_refused(refused, 503, "STORAGE_UNAVAILABLE")
            assert int(refused.headers["retry-after"]) > 0
            for _ in range(100):  # reported in the background
                if _uses(broken, "nina", dataset["id"]) == 0:
                    break
                time.sleep(0.05)
            assert _uses(broken, "nina", dataset["id"]) == 0
        with broken.client("nina") as client:
            events = client.get(f"/v1/datasets/{dataset['id']}/download-events").json()
        granted = [e for e in events["download_events"] if e["outcome"] == "granted"]
        assert len(granted) == 2
        assert all(int(e.get("bytes_sent", "0")) == 0 for e in granted)
        logs = broken.logs()
        assert "cannot fetch a granted download" in logs
        assert "signature=" not in logs  # the granted URL is a credential


def test_the_gateway_serves_downloads_with_no_storage_configuration(
    suite: Suite, tmp_path: Path
) -> None:
    """The gateway fetches a download's bytes from the URL the datasets service grants: it
    has no directory, bucket or credentials of its own, in its settings or its environment."""
    assert [f for f in GatewaySettings.model_fields if "storage" in f or "s3" in f] == []

    def environment(name: str) -> set[str]:
        environ = Path(f"/proc/{suite.processes[name].pid}/environ").read_bytes()
        return {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}

    assert "TUNELAB_DATASETS_STORAGE_DIR" in environment("datasets")  # what it is spared
    gateway = environment("gateway")
    assert sorted(n for n in gateway if storage_setting(n)) == []
    assert not gateway & {"TUNELAB_DATASETS_STORAGE_DIR", "TUNELAB_DEPLOY_OUTPUT_DIR"}

    content = sft(3000) + f'{{"text": "{suite.storage_kind}"}}\n'.encode()
    path = tmp_path / "served.jsonl"
    path.write_bytes(content)
    dataset = upload(suite, path, "olga")
    minted = mint(suite, "olga", dataset["id"], max_uses=2)
    whole = httpx.get(minted["url"], timeout=30)
    assert (whole.status_code, whole.content) == (200, content)
    resumed = httpx.get(minted["url"], headers={"Range": "bytes=1000-"}, timeout=30)
    assert (resumed.status_code, resumed.content) == (206, content[1000:])
    assert resumed.headers["content-range"] == f"bytes 1000-{len(content) - 1}/{len(content)}"


@pytest.mark.parametrize(
    ("name", "field"),
    [("../../etc/passwd", "name"), ("/etc/passwd", "name"), ("a%00b.jsonl", "name"), ("", "name")],
)
def test_hostile_names_are_400(suite: Suite, name: str, field: str) -> None:
    with suite.client("carol") as client:
        response = client.post(f"/v1/datasets?name={name}", content=sft(3))
    assert_refused(response, 400, "INVALID_ARGUMENT")
    assert response.json()["error"]["details"][0]["metadata"] == {"field": field}
    with suite.client("carol") as client:
        assert client.get("/v1/datasets").json()["datasets"] == []


def test_zero_bytes_broken_line_and_huge_line(suite: Suite) -> None:
    with suite.client("dave") as client:
        empty = client.post("/v1/datasets?name=empty.jsonl", content=b"")
        broken = client.post(
            "/v1/datasets?name=broken.jsonl", content=sft(10) + b"{oops\n" + sft(10)
        )
        huge = client.post(
            "/v1/datasets?name=huge.jsonl",
            content=sft(2) + b'{"text": "' + b"x" * (3 * MAX_LINE) + b'"}\n',
        )
    assert empty.status_code == 201
    assert empty.json()["format_error"]["line"] == "0"
    assert broken.status_code == 201
    assert broken.json()["format_error"]["line"] == "11"
    assert huge.status_code == 201
    assert huge.json()["format_error"]["line"] == "3"
    assert "longer than" in huge.json()["format_error"]["reason"]


def test_upload_limits_and_shapes(suite: Suite) -> None:
    with suite.client("erin") as client:
        body = sft(1) * (MAX_UPLOAD // 50)
        assert len(body) > MAX_UPLOAD
        too_big = client.post("/v1/datasets?name=big.jsonl", content=body)
        assert_refused(too_big, 413, "PAYLOAD_TOO_LARGE")

        def chunked() -> Iterator[bytes]:  # no Content-Length: caught while streaming
            for start in range(0, len(body), 65536):
                yield body[start : start + 65536]

        too_big = client.post("/v1/datasets?name=big.jsonl", content=chunked())
        assert_refused(too_big, 413, "PAYLOAD_TOO_LARGE")
        bad_name = client.post("/v1/datasets?name=../x", content=chunked())
        assert_refused(bad_name, 400, "INVALID_ARGUMENT")
        form = client.post("/v1/datasets?name=x.jsonl", files={"file": ("x.jsonl", sft(1))})
        assert_refused(form, 415, "UNSUPPORTED_MEDIA_TYPE")
        curl_d = client.post(  # what curl -d @file sends: a form, newlines stripped
            "/v1/datasets?name=x.jsonl",
            content=sft(2).replace(b"\n", b""),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_refused(curl_d, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert "curl -T" in curl_d.json()["error"]["message"]
        put = client.put("/v1/datasets?name=x.jsonl", content=sft(1))
        assert_refused(put, 405, "METHOD_NOT_ALLOWED")
        assert "add -X POST" in put.json()["error"]["message"]
        nameless = client.post("/v1/datasets", content=sft(1))
        assert_refused(nameless, 400, "INVALID_ARGUMENT")
    assert suite.unfinished_uploads() == []


def test_client_vanishing_mid_upload_leaves_nothing(suite: Suite) -> None:
    host, port = suite.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/datasets?name=gone.jsonl HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {suite.token('frank')}\r\n".encode()
            + b"Content-Length: 5000000\r\n\r\n"
            + sft(2000)
        )
        time.sleep(0.5)
    for _ in range(50):
        if not suite.unfinished_uploads():
            break
        time.sleep(0.1)
    assert suite.unfinished_uploads() == []
    with suite.client("frank") as client:
        assert client.get("/v1/datasets").json()["datasets"] == []
    gateway_log = (suite.var / "gateway.log").read_text()
    assert "client went away during an upload" in gateway_log
    assert "Exception in ASGI application" not in gateway_log


def test_json_routes_refuse_bad_input_clearly(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "gina")
    path = f"/v1/datasets/{dataset['id']}/download-tokens"
    with suite.client("gina") as client:
        for body, fragment in (
            (b"{not json", "not valid JSON"),
            (b"[1]", "JSON object"),
            (b'{"max_uses": "many"}', "max_uses"),
            (b'{"unknown_field": 1}', "unknown field 'unknown_field'; this body takes: max_uses"),
            (b'{"dataset_id": "ds_other"}', "unknown field 'dataset_id'"),
            (b'{"ttl_seconds": 99999}', "ttl_seconds"),
        ):
            response = client.post(path, content=body)
            assert_refused(response, 400, "INVALID_ARGUMENT")
            assert fragment in response.json()["error"]["message"]
        assert_refused(client.get("/v1/datasets?colour=red"), 400, "INVALID_ARGUMENT")
        assert_refused(client.get("/v1/datasets?page_size=-3"), 400, "INVALID_ARGUMENT")
        assert_refused(client.get("/v1/datasets?page_token=forged"), 400, "INVALID_PAGE_TOKEN")
        assert client.get("/v1/nowhere").status_code == 404
        assert client.get("/v1/nowhere").json()["error"]["status"] == "NOT_FOUND"
        assert client.put("/v1/datasets").status_code == 405
        camel = client.post(path, json={"maxUses": 2, "ttlSeconds": 60})
        assert camel.status_code == 201
        suite.remember(camel.json()["token"])
        assert camel.json()["max_uses"] == 2


def test_list_get_delete(suite: Suite, data: Path) -> None:
    ids = [upload(suite, data, "hank", name=f"d{i}.jsonl")["id"] for i in range(3)]
    with suite.client("hank") as client:
        first = client.get("/v1/datasets?page_size=2").json()
        second = client.get(
            f"/v1/datasets?page_size=2&page_token={first['next_page_token']}"
        ).json()
        assert [d["id"] for d in first["datasets"] + second["datasets"]] == ids[::-1]
        assert second["next_page_token"] == ""
        assert client.get(f"/v1/datasets/{ids[0]}").json()["name"] == "d0.jsonl"
        assert client.delete(f"/v1/datasets/{ids[0]}").status_code == 204
        assert_refused(client.get(f"/v1/datasets/{ids[0]}"), 404, "NOT_FOUND")


def test_probes_metrics_and_openapi(suite: Suite) -> None:
    assert httpx.get(f"{suite.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{suite.url}/readyz").json()
    assert ready == {
        "status": "ready",
        "checks": {
            "datasets": "SERVING",
            "deploy": "SERVING",
            "tracing": "SERVING",
            "eval": "SERVING",
        },
    }
    metrics = httpx.get(f"{suite.url}/metrics").text
    assert 'route="/v1/dataset-downloads/{token}"' in metrics
    assert "tldl_" not in metrics
    spec = httpx.get(f"{suite.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    design_routes = {
        ("post", "/v1/datasets"),
        ("get", "/v1/datasets"),
        ("get", "/v1/datasets/{dataset_id}"),
        ("delete", "/v1/datasets/{dataset_id}"),
        ("post", "/v1/datasets/{dataset_id}/download-tokens"),
        ("delete", "/v1/datasets/{dataset_id}/download-tokens/{token_id}"),
        ("get", "/v1/dataset-downloads/{token}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    }
    documented = {(verb, path) for path, ops in spec["paths"].items() for verb in ops}
    assert design_routes <= documented


def test_every_private_route_demands_a_valid_token(suite: Suite) -> None:
    spec = httpx.get(f"{suite.url}/openapi.json").json()
    now = int(time.time())
    forged = {
        "none": _unsigned({"sub": "alice", "exp": now + 600}),
        "wrong signature": suite.token("alice")[:-4] + "AAAA",
        "expired": suite.token("alice", ttl=-120),
        "malformed": "not.a.jwt",
    }
    checked = 0
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            if operation.get("security") == []:
                continue
            url = suite.url + path.replace("{dataset_id}", "ds_x").replace("{token_id}", "dt_x")
            response = httpx.request(verb.upper(), url)
            assert_refused(response, 401, "UNAUTHENTICATED")
            assert response.headers["www-authenticate"].startswith("Bearer")
            for label, value in forged.items():
                response = httpx.request(
                    verb.upper(), url, headers={"Authorization": f"Bearer {value}"}
                )
                assert response.status_code == 401, (label, verb, path)
            checked += 1
    assert checked >= 7


def _part(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims)}."


def test_attacker_shaped_headers_get_clean_answers(suite: Suite, data: Path) -> None:
    dataset = upload(suite, data, "josé")  # and a user id that is not ASCII
    minted = mint(suite, "josé", dataset["id"], max_uses=2)
    huge_range = httpx.get(minted["url"], headers={"Range": "bytes=" + "1" * 5000 + "-"})
    assert huge_range.status_code == 200  # malformed: ignored, the whole file is sent
    assert len(huge_range.content) == data.stat().st_size
    for header in ({"alg": 'x", evil="1'}, {"alg": "HS256", "kid": 123}, {"alg": "\u2603"}):
        forged = f"{_part(header)}.{_part({'sub': 'alice', 'exp': 9999999999})}.c2ln"
        response = httpx.get(
            f"{suite.url}/v1/datasets", headers={"Authorization": f"Bearer {forged}"}
        )
        assert_refused(response, 401, "UNAUTHENTICATED")
        assert "evil" not in response.headers["www-authenticate"]
    with suite.client("josé") as client:
        listed = client.get("/v1/datasets").json()["datasets"]
        events = client.get(f"/v1/datasets/{dataset['id']}/download-events").json()
    assert [d["id"] for d in listed] == [dataset["id"]]
    assert [e["range"][:8] for e in events["download_events"]] == ["bytes=11"]


def test_no_credential_reached_a_log_line(suite: Suite) -> None:
    """Runs last in this module: every token, key and secret used above, against every log."""
    logs = suite.logs()
    assert '"msg": "http"' in logs  # the logs are there and were written
    assert "download attempt" in logs
    leaked = [s[:12] + "…" for s in suite.secrets_seen if s in logs]
    assert leaked == []
    # Nor any URL a download's bytes were granted at (the blob listener's, or S3's presigned),
    # nor botocore's signing records, from which a presigned URL can be rebuilt.
    assert "signature=" not in logs.lower()
    assert '"logger": "botocore.auth"' not in logs


def test_abandoned_downloads_leak_no_file_descriptors(suite: Suite, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(sft(60_000))  # ~6 MB: more than the socket buffers hold
    dataset = upload(suite, big, "ivan")
    minted = mint(suite, "ivan", dataset["id"], max_uses=40)
    gateway = suite.processes["gateway"].pid

    def open_fds() -> int:
        return len(list(Path(f"/proc/{gateway}/fd").iterdir()))

    # The test counts descriptors, not seconds: httpx's 5 s default must not fail it on a
    # loaded machine (a CI run once waited longer than that for one download's headers).
    with httpx.stream("GET", minted["url"], timeout=60) as response:  # warm up: lazily opened
        next(response.iter_raw(65536))
    time.sleep(0.3)
    before = open_fds()
    for _ in range(30):
        with httpx.stream("GET", minted["url"], timeout=60) as response:
            assert response.status_code == 200
            next(response.iter_raw(65536))  # then hang up mid-transfer
    for _ in range(50):
        if open_fds() <= before:
            break
        time.sleep(0.1)
    assert open_fds() <= before
