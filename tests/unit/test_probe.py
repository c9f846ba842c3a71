"""The containers' health check: 0 only while the server says SERVING."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import probe
from tests.e2e.conftest import free_port


@pytest.fixture
def served() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    yield address, servicer
    server.stop(None)


def test_serving_is_healthy(served: tuple[str, health.HealthServicer]) -> None:
    address, servicer = served
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main([address]) == 0


def test_draining_is_not(
    served: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = served
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.main([address]) == 1
    assert capsys.readouterr().out == f"{address}: NOT_SERVING\n"


def test_nothing_listening_is_not(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert probe.main([address, "--timeout", "0.5"]) == 1
    assert capsys.readouterr().out.startswith(f"{address}: UNAVAILABLE")


def test_unknown_service_is_not(served: tuple[str, health.HealthServicer]) -> None:
    address, servicer = served
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main([address, "--service", "tunelab.nope.v1.Nope"]) == 1
