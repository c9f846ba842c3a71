"""The pod's reporter against a real HTTP server: retries 429 and 5xx, waiting as long as the
gateway's Retry-After asks, and gives up on other refusals at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from services.deploy.pod import report


class Scripted(BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.seen.append(json.loads(self.rfile.read(length)))
        status, headers = self.answers.pop(0)
        body = json.dumps({"state": "training"} if status == 200 else {"error": {}}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TUNELAB_REPORT_URL", f"http://127.0.0.1:{httpd.server_port}/r")
    monkeypatch.setenv("TUNELAB_JOB_TOKEN", "tljb_test")
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    Scripted.seen = []
    yield waits
    httpd.shutdown()


def test_a_rate_limited_report_waits_as_asked_then_lands(server: list[float]) -> None:
    Scripted.answers = [(429, {"Retry-After": "7"}), (503, {}), (200, {})]
    assert report.post({"phase": "training"}) == {"state": "training"}
    assert server == [7.0, 2.0]  # as asked, then the usual backoff
    assert len(Scripted.seen) == 3


def test_a_long_retry_after_is_capped_and_a_refusal_is_final(server: list[float]) -> None:
    Scripted.answers = [(429, {"Retry-After": "3600"}), (401, {})]
    assert report.post({"phase": "training"}) is None
    assert server == [60.0]
    assert len(Scripted.seen) == 2
