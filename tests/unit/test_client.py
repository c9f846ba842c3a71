"""Outbound channels: deadlines that mean what they say, and calls that wait for a service that
is still starting instead of failing at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.common.client import StreamDeadlineMissing, open_channel
from services.common.server import RunningServer, ServerSpec, start
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.conftest import free_port


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(2)
    return request


async def ticks(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(int(request)):
        await asyncio.sleep(0.1)
        yield b"tick"


HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
}


def probe(address: str, handlers: dict[str, Any]) -> ServerSpec:
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(h) for name, h in handlers.items()
    }
    return ServerSpec(
        name="probe",
        domain="probe.tunelab.dev",
        address=address,
        internal_token=INTERNAL_TOKEN,
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Probe", methods | HANDLERS),)
        ),
        service_names=["test.Probe"],
        grace_seconds=0,
    )


async def serve(address: str) -> RunningServer:
    return await start(probe(address, {}))


async def test_a_stream_without_a_deadline_is_refused_before_it_is_sent() -> None:
    address = f"127.0.0.1:{free_port()}"
    running = await serve(address)
    try:
        async with open_channel(address, INTERNAL_TOKEN) as channel:
            stream: Any = channel.unary_stream("/test.Probe/Ticks")
            with pytest.raises(StreamDeadlineMissing, match="Ticks streams"):
                await stream(b"3").read()
            # With its own deadline, it outlives the unary default.
            short: Any = open_channel(address, INTERNAL_TOKEN, timeout=0.2)
            call = short.unary_stream("/test.Probe/Ticks")(b"5", timeout=5)
            assert [m async for m in call] == [b"tick"] * 5
            await short.close()
    finally:
        await running.stop()


async def test_a_unary_call_gets_the_channels_default_deadline() -> None:
    address = f"127.0.0.1:{free_port()}"
    running = await serve(address)
    try:
        async with open_channel(address, INTERNAL_TOKEN, timeout=0.3) as channel:
            slow_call: Any = channel.unary_unary("/test.Probe/Slow")
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await slow_call(b"x")
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 1.5
    finally:
        await running.stop()


async def test_a_call_made_while_the_service_starts_waits_for_it() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with open_channel(address, INTERNAL_TOKEN, timeout=10, ready_wait=5) as channel:
        echo_call: Any = channel.unary_unary("/test.Probe/Echo")
        # The channel has failed to connect once and is in its reconnect backoff.
        with pytest.raises(grpc.aio.AioRpcError):
            await echo_call(b"x", timeout=0.2)
        pending = asyncio.ensure_future(echo_call(b"hello"))
        await asyncio.sleep(0.7)
        running = await serve(address)
        try:
            assert await asyncio.wait_for(pending, 8) == b"hello"
        finally:
            await running.stop()


async def test_a_service_that_stays_away_is_unavailable_after_the_wait() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with open_channel(address, INTERNAL_TOKEN, timeout=10, ready_wait=0.5) as channel:
        echo_call: Any = channel.unary_unary("/test.Probe/Echo")
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo_call(b"x")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert 0.4 < time.monotonic() - started < 5


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_call_whose_service_dies_under_it_is_made_again_only_if_idempotent(
    idempotent: bool,
) -> None:
    """The channel is ready when the call is sent; the service dies with the call in it and is
    back a moment later. grpc's own retries come too soon to see it; the interceptor waits for
    the channel and makes an idempotent call once more. Any other call fails as it did."""
    address = f"127.0.0.1:{free_port()}"
    received: list[str] = []
    running: list[RunningServer] = []
    restarting: list[asyncio.Task[None]] = []

    async def restart() -> None:
        await running[0].server.stop(0)
        await asyncio.sleep(1.5)  # longer than grpc's retries take (at most 0.7 s)
        running[0] = await start(probe(address, {"Record": record_only}))

    async def dies(request: bytes, context: Any) -> bytes:
        received.append("first")
        restarting.append(asyncio.create_task(restart()))
        await asyncio.sleep(10)
        return request

    async def record_only(request: bytes, context: Any) -> bytes:
        received.append("again")
        return request

    running.append(await start(probe(address, {"Record": dies})))
    retry = {"test.Probe": ["Record"]} if idempotent else None
    try:
        async with open_channel(address, INTERNAL_TOKEN, retry=retry, ready_wait=5) as channel:
            call: Any = channel.unary_unary("/test.Probe/Record")
            await channel.channel_ready()
            if idempotent:
                assert await call(b"x") == b"x"
                assert received == ["first", "again"]
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(b"x")
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert received == ["first"]
    finally:
        await asyncio.gather(*restarting)
        await running[0].stop()
