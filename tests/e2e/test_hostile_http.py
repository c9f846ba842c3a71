"""What a generator will not try: hostile bodies on every route that takes one, each answered
with a 4xx and the JSON error body, and every process of the suite alive afterwards."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Suite

pytestmark = pytest.mark.e2e

# Valid JSON of every type but object, broken JSON, and JSON that parsers disagree about.
BODIES: dict[str, bytes] = {
    "zero": b"0",
    "null": b"null",
    "true": b"true",
    "string": b'"spans"',
    "array": b"[]",
    "array of objects": b"[{}]",
    "nan": b"NaN",
    "infinity": b'{"ttl_seconds": Infinity}',
    "nan field": b'{"page_size": NaN, "spans": [{"trace_id": NaN}]}',
    "past int64": b'{"ttl_seconds": 99999999999999999999999, "max_uses": 1e400}',
    "past int64 negative": b'{"max_uses": -99999999999999999999999}',
    "deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep in a field": b'{"spans": [{"metadata": '
    + b'{"a":' * 5_000
    + b"1"
    + b"}" * 5_000
    + b"}]}",
    "invalid utf-8": b'{"name": "\xff\xfe\xc3"}',
    "lone surrogate": b'{"api_key": "\\ud800"}',
    "nul byte": b'{"api_key": "abc\x00def"}',
    "truncated": b'{"spans": [',
    "wrong types": b'{"spans": 5, "deployment": "x", "report": [], "ttl_seconds": "soon"}',
    "unknown field": b'{"zzz": 1}',
    "bom": b"\xef\xbb\xbf{}",
}


def body_routes(suite: Suite) -> list[tuple[str, str]]:
    """(verb, path) of every route with a JSON request body, from the OpenAPI document."""
    document = httpx.get(f"{suite.url}/openapi.json").json()
    routes = []
    for path, operations in document["paths"].items():
        for verb, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content and path != "/v1/traces":
                routes.append((verb.upper(), _concrete(path)))
    assert len(routes) >= 7, routes
    return routes


def _concrete(path: str) -> str:
    for name, value in {
        "{dataset_id}": "ds_nothere",
        "{deployment_id}": "dep_nothere",
        "{provider}": "runpod",
        "{token_id}": "tok_nothere",
    }.items():
        path = path.replace(name, value)
    return path


def assert_refused(reply: httpx.Response, what: str) -> dict[str, Any]:
    assert 400 <= reply.status_code < 500, f"{what}: {reply.status_code} {reply.text[:300]}"
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == reply.status_code, what
    assert error["message"], what
    return error


def assert_all_alive(suite: Suite) -> None:
    for name, process in suite.processes.items():
        assert process.poll() is None, f"{name} died:\n{suite.logs()[-3000:]}"
    assert httpx.get(f"{suite.url}/readyz", timeout=5).status_code == 200


@pytest.fixture
def alice(suite: Suite) -> Iterator[httpx.Client]:
    with suite.client("alice") as client:
        yield client


@pytest.mark.containers
def test_hostile_json_bodies_on_every_route_are_4xx(suite: Suite, alice: httpx.Client) -> None:
    for verb, path in body_routes(suite):
        for name, body in BODIES.items():
            for media in ("application/json", "text/plain"):
                reply = alice.request(verb, path, content=body, headers={"content-type": media})
                if reply.status_code < 400:  # an empty-ish body some routes accept as {}
                    assert name in {"unknown field", "bom"} or verb == "DELETE", (verb, path, name)
                    continue
                assert_refused(reply, f"{verb} {path} {name} {media}")
    assert_all_alive(suite)


@pytest.mark.containers
def test_otlp_json_that_is_not_an_object_is_400(suite: Suite, alice: httpx.Client) -> None:
    for name, body in BODIES.items():
        reply = alice.post("/v1/traces", content=body, headers={"content-type": "application/json"})
        if reply.status_code == 200:  # an object of fields OTLP ignores, as receivers must
            assert isinstance(strict_json(body), dict), name
            assert reply.json() == {}
            continue
        assert_refused(reply, f"OTLP {name}")
    garbage = alice.post(
        "/v1/traces", content=b"\x0a\xff\xff\xff\xff\x0f", headers={"content-type": PROTOBUF}
    )
    assert_refused(garbage, "OTLP protobuf garbage")
    assert_all_alive(suite)


PROTOBUF = "application/x-protobuf"


def strict_json(body: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    return json.loads(body, parse_constant=refuse)


def bomb(inflated: int) -> bytes:
    """A gzip body of about inflated/1000 bytes that inflates to `inflated` bytes of JSON."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(b'{"spans": ["')]
    block = b"a" * (1 << 20)
    for _ in range(inflated >> 20):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(b'"]}'))
    parts.append(compressor.flush())
    return b"".join(parts)


def test_gzip_bombs_stop_at_the_limit(suite: Suite, alice: httpx.Client) -> None:
    body = bomb(1 << 30)  # 1 GiB inflated, about 1 MB sent
    assert len(body) < 2 << 20
    gz = {"content-encoding": "gzip"}
    for path, media in (("/v1/traces", "application/json"), ("/v1/traces", PROTOBUF)):
        reply = alice.post(path, content=body, headers={**gz, "content-type": media})
        assert reply.status_code == 413, reply.text
    for verb, path in body_routes(suite):
        reply = alice.request(verb, path, content=body, headers=gz)
        assert_refused(reply, f"bomb {verb} {path}")
        assert reply.status_code in (401, 404, 413), (verb, path, reply.text)
    assert_all_alive(suite)


def test_broken_and_unsupported_encodings(suite: Suite, alice: httpx.Client) -> None:
    ok = gzip.compress(b'{"spans": []}')
    cases = {
        "not gzip": (b'{"spans": []}', "gzip", 400),
        "cut short": (ok[:-9], "gzip", 400),
        "data after the end": (ok + b"trailing", "gzip", 400),
        "two members": (ok + ok, "gzip", 400),
        "brotli": (b"\x0b\x02\x80{}\x03", "br", 415),
        "deflate": (zlib.compress(b"{}"), "deflate", 415),
    }
    for name, (body, encoding, status) in cases.items():
        for path in ("/v1/traces/spans", "/v1/traces"):
            reply = alice.post(
                path,
                content=body,
                headers={"content-encoding": encoding, "content-type": "application/json"},
            )
            assert reply.status_code == status, (name, path, reply.text)
            assert_refused(reply, name)
    compressed = alice.post("/v1/traces/spans", content=ok, headers={"content-encoding": "gzip"})
    assert compressed.status_code == 200, compressed.text
    upload = alice.post(
        "/v1/datasets",
        params={"name": "z.jsonl"},
        content=gzip.compress(b"{}\n"),
        headers={"content-encoding": "gzip"},
    )
    assert upload.status_code == 415, upload.text
    assert_all_alive(suite)


def test_wrong_content_types_and_empty_bodies(suite: Suite, alice: httpx.Client) -> None:
    for media in ("application/xml", "multipart/form-data; boundary=x", PROTOBUF, "image/png"):
        reply = alice.post(
            "/v1/traces/spans", content=b'{"spans": []}', headers={"content-type": media}
        )
        assert reply.status_code == 415, (media, reply.text)
        assert_refused(reply, media)
    for media in ("text/plain", "", "application/octet-stream"):
        headers = {"content-type": media} if media else {}
        reply = alice.post("/v1/traces", content=b"{}", headers=headers)
        assert reply.status_code == 415, (media, reply.text)
    empty = alice.post("/v1/deployments", content=b"")
    assert_refused(empty, "empty create")
    empty_upload = alice.post("/v1/datasets", params={"name": "empty.jsonl"}, content=b"")
    assert empty_upload.status_code in (201, 400), empty_upload.text
    assert_all_alive(suite)


def test_hostile_paths_queries_and_headers(suite: Suite, alice: httpx.Client) -> None:
    cases = [
        "/v1/datasets?page_size=99999999999999999999999",
        "/v1/datasets?page_size=-1",
        "/v1/datasets?page_size=NaN",
        "/v1/datasets?page_token=%FF%FE%00",
        "/v1/datasets?page_token=" + "A" * 20_000,
        "/v1/traces?min_duration_ms=-Infinityx",
        "/v1/traces?started_after=not-a-time",
        "/v1/traces?started_after=99999-01-01T00:00:00Z",
        "/v1/traces/analytics?group_by=%FF",
        "/v1/traces/export?format=exe",
        "/v1/deployments/%00/events",
        "/v1/deployments/dep_x/watch?after_sequence=99999999999",
        "/v1/datasets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/dataset-downloads/%2e%2e%2fsecrets",
    ]
    for url in cases:
        assert_refused(alice.get(url), url)
    watch = alice.get("/v1/deployments/dep_x/watch", headers={"Last-Event-ID": "-1"})
    assert_refused(watch, "Last-Event-ID")
    assert_all_alive(suite)


def test_nul_and_control_characters_are_refused_or_stored_never_a_5xx(
    suite: Suite, alice: httpx.Client
) -> None:
    span = {
        "trace_id": "nul-trace",
        "span_id": "nul-span",
        "name": "chat\u0000x",
        "timing": {"start_time": "2026-11-28T10:00:00Z"},
        "metadata": {"k\u0000": "v\u0000\u0001", "nested": {"a": ["\u0000"]}},
        "input": {"messages": [{"role": "user", "content": "hi\u0000there"}]},
        "tags": ["t\u0000"],
    }
    reply = alice.post("/v1/traces/spans", json={"spans": [span]})
    assert reply.json()["accepted"] == 1, reply.text
    # Kept, with U+0000 as U+FFFD on both backends (PostgreSQL cannot store it).
    stored = alice.get("/v1/traces/nul-trace").json()["roots"][0]["span"]
    assert stored["name"] == "chat\ufffdx"
    assert stored["metadata"] == {"k\ufffd": "v\ufffd\u0001", "nested": {"a": ["\ufffd"]}}
    for url in (
        "/v1/deployments/dep%00x",
        "/v1/datasets/ds%00x/download-tokens",
        "/v1/traces/t%00x",
        "/v1/traces?model=gpt%00",
        "/v1/traces?session_id=%01",
        "/v1/datasets?page_token=%00",
    ):
        assert_refused(alice.get(url), url)
    named = alice.post("/v1/datasets", params={"name": "a\x00b.jsonl"}, content=b"{}\n")
    assert_refused(named, "NUL in a dataset name")
    key = alice.put("/v1/provider-keys/runpod", json={"api_key": "abc\u0000defghij"})
    assert_refused(key, "NUL in a key")
    assert_all_alive(suite)


def test_job_token_routes_authenticate_before_they_read_the_body(
    suite: Suite, alice: httpx.Client
) -> None:
    anonymous = httpx.Client(base_url=suite.url)
    for body in (b"{", b"[1]", b'{"phase": "nonsense", "zzz": 1}'):
        for headers in ({}, {"Authorization": "Bearer tljb_" + "A" * 43}):
            reply = anonymous.post("/v1/deployments/dep_x/reports", content=body, headers=headers)
            error = assert_refused(reply, "report")
            assert reply.status_code == 401, reply.text
            assert "phase" not in error["message"]
            assert "field" not in reply.text
    put = anonymous.put("/v1/deployments/dep_x/output", content=b"{")
    assert put.status_code == 401
    assert_all_alive(suite)
