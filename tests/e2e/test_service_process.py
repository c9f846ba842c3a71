"""The datasets service as an operator runs it: probes, metrics, SIGTERM, a stale schema."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import INTERNAL_TOKEN
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def service_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNELAB_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "TUNELAB_DATASETS_DATABASE_URL": f"sqlite:///{tmp_path / 'datasets.db'}",
        "TUNELAB_DATASETS_STORAGE_DIR": str(tmp_path / "blobs"),
        "TUNELAB_DATASETS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_DATASETS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_DATASETS_BLOB_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNELAB_LOG_FORMAT": "json",
    }


def datasets(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.datasets", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tunelab.datasets.v1.DatasetsService"), timeout=1
        )
    return int(reply.status)


def test_refuses_to_start_on_a_stale_schema(tmp_path: Path) -> None:
    process = datasets(env=service_env(tmp_path))
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "python -m services.datasets migrate upgrade" in output


def test_migrate_wait_holds_until_another_process_migrates(tmp_path: Path) -> None:
    """What a Kubernetes init container runs: it fails after its timeout while the schema is
    stale, and returns as soon as the migration Job has brought it to head."""
    env = service_env(tmp_path)
    stale = datasets("migrate", "wait", "--timeout", "1", env=env)
    output, _ = stale.communicate(timeout=30)
    assert stale.returncode == 1
    assert "has its migration (`migrate upgrade`) run?" in output
    waiting = datasets("migrate", "wait", "--timeout", "60", env=env)
    try:
        time.sleep(1)
        assert waiting.poll() is None
        assert datasets("migrate", "upgrade", env=env).wait(timeout=30) == 0
        output, _ = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, output
    assert "datasets schema: " in output


def test_serves_health_and_metrics_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    migrated = datasets("migrate", "upgrade", env=env)
    assert migrated.wait(timeout=30) == 0
    process = datasets(env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status = asyncio.run(health(env["TUNELAB_DATASETS_GRPC_ADDRESS"]))
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "the service did not come up"
                time.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.SERVING
        metrics = httpx.get(f"http://{env['TUNELAB_DATASETS_METRICS_ADDRESS']}/metrics").text
        assert "tunelab_grpc_server_handling_seconds" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        output = process.stdout.read() if process.stdout else ""
        assert '"msg": "shutting down"' in output
    finally:
        if process.poll() is None:
            process.kill()
