"""The first requests after a service (re)starts: the gateway waits for it, within the call's
deadline, instead of answering 503 while its channel is still connecting; a service that
stays away is a 503 after that wait, never a hang and never a 500."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import Suite, _spawn

pytestmark = pytest.mark.e2e


def test_a_request_sent_as_a_service_starts_waits_for_it(suite: Suite) -> None:
    alice = suite.client("alice")
    assert alice.get("/v1/datasets").status_code == 200  # the channel is connected
    old = suite.processes["datasets"]
    old.send_signal(signal.SIGKILL)
    old.wait(timeout=10)
    # Sent at once, while the new process is still importing: no /readyz wait first.
    suite.processes["datasets"] = _spawn(suite.var, "datasets", "services.datasets", suite.env)
    started = time.monotonic()
    first = alice.get("/v1/datasets")
    waited = time.monotonic() - started
    if first.status_code != 200:  # say whether the service was slow to start or the wait failed
        while alice.get("/v1/datasets").status_code != 200:
            assert time.monotonic() - started < 60, "the datasets service never came back"
        up = time.monotonic() - started
        pytest.fail(f"{first.text} after {waited:.1f} s; the service answered after {up:.1f} s")
    assert waited < 10


def test_a_service_that_stays_away_is_a_503_after_the_wait(suite: Suite) -> None:
    alice = suite.client("alice")
    old = suite.processes["tracing"]
    old.send_signal(signal.SIGKILL)
    old.wait(timeout=10)
    try:
        started = time.monotonic()
        reply = alice.get("/v1/traces")
        waited = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["status"] == "UNAVAILABLE"
        assert "tracing service is unavailable" in reply.json()["error"]["message"]
        assert 3 < waited < 15  # TUNELAB_GATEWAY_READY_WAIT_SECONDS (5 s), then the answer
        assert alice.get("/readyz").status_code == 503
        assert alice.get("/v1/datasets").status_code == 200  # the others are unaffected
    finally:
        suite.processes["tracing"] = _spawn(suite.var, "tracing", "services.tracing", suite.env)
    assert alice.get("/v1/traces").status_code == 200
