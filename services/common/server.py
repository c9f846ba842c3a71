"""gRPC server bootstrap: interceptors, health checking, reflection, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.interceptors import ServiceInterceptor

log = logging.getLogger(__name__)

# Messages bigger than this are a bug or an attack; uploads stream in chunks far below it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ServerSpec:
    """What a service contributes to the shared bootstrap."""

    name: str
    domain: str
    address: str
    internal_token: str
    register: Callable[[grpc.aio.Server], None]
    service_names: Sequence[str]
    grace_seconds: float = 10.0
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)
    # Run once the server has stopped (release worker processes and the like).
    after_stop: Sequence[Callable[[], None]] = field(default_factory=tuple)
    # Awaited before the server listens (open clients, bind side listeners), and after it has
    # stopped, in reverse order.
    startup: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)
    shutdown: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    tasks: list[asyncio.Task[None]]
    spec: ServerSpec

    async def stop(self) -> None:
        """Fail health checks first so load balancers drain us, then finish in-flight calls."""
        await self.health.enter_graceful_shutdown()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.stop(self.spec.grace_seconds)
        for close in reversed(self.spec.shutdown):
            await close()
        for release in self.spec.after_stop:
            release()


async def start(spec: ServerSpec) -> RunningServer:
    for prepare in spec.startup:
        await prepare()
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(domain=spec.domain, internal_token=spec.internal_token)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this, a second copy binds the same port too and steals half the calls.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ],
    )
    spec.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *spec.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(spec.address)
    if port == 0:
        raise SystemExit(f"{spec.name}: cannot listen on {spec.address}")
    await server.start()
    tasks = [asyncio.create_task(job()) for job in spec.background]
    log.info("serving", extra={"service": spec.name, "address": spec.address, "port": port})
    return RunningServer(server, health_servicer, port, tasks, spec)


async def serve(spec: ServerSpec) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start(spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"service": spec.name, "grace_s": spec.grace_seconds})
    await running.stop()
