"""The shared server interceptor: errors become statuses that leak nothing; metrics count them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from services.common.client import open_channel
from services.common.db import Database
from services.common.errors import RemoteError, ServiceError, invalid_argument
from services.common.identity import REQUEST_ID_KEY
from services.common.server import ServerSpec, start
from tests.conftest import INTERNAL_TOKEN

SECRET = "sk-live-" + "z" * 30


async def fails(request: bytes, context: Any) -> bytes:
    raise RuntimeError(f"database password is {SECRET}")


async def refuses(request: bytes, context: Any) -> bytes:
    raise invalid_argument("thing", "thing must be blue")


async def streams_then_fails(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"one"
    raise RuntimeError(SECRET)


async def echo(request: bytes, context: Any) -> bytes:
    return request


HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "Fails": grpc.unary_unary_rpc_method_handler(fails),
    "Refuses": grpc.unary_unary_rpc_method_handler(refuses),
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Stream": grpc.unary_stream_rpc_method_handler(streams_then_fails),
}


@pytest.fixture
async def address() -> AsyncIterator[str]:
    spec = ServerSpec(
        name="probe",
        domain="probe.tunelab.dev",
        address="127.0.0.1:0",
        internal_token=INTERNAL_TOKEN,
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Probe", HANDLERS),)
        ),
        service_names=["test.Probe"],
    )
    running = await start(spec)
    yield f"127.0.0.1:{running.port}"
    await running.stop()


@pytest.fixture
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(address, INTERNAL_TOKEN) as opened:
        yield opened


def method(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/test.Probe/{name}")


def handled(name: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "tunelab_grpc_server_handled_total",
        {"grpc_service": "test.Probe", "grpc_method": name, "grpc_code": code},
    )
    return value or 0.0


async def test_unexpected_exception_is_internal_with_request_id_and_no_detail(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    before = handled("Fails", "INTERNAL")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(channel, "Fails")(b"x", metadata=((REQUEST_ID_KEY, "rid-42"),))
    error = RemoteError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    assert "rid-42" in error.message
    assert SECRET not in error.message
    assert "password" not in error.message
    assert handled("Fails", "INTERNAL") == before + 1
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


async def test_service_error_keeps_its_code_reason_and_field(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(channel, "Refuses")(b"x")
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "thing must be blue")
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", "probe.tunelab.dev")
    assert error.metadata == {"field": "thing"}


async def test_a_failing_stream_ends_with_internal(channel: grpc.aio.Channel) -> None:
    stream: Any = channel.unary_stream("/test.Probe/Stream")
    call = stream(b"x", timeout=10)
    assert await call.read() == b"one"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (caught.value.details() or "")


async def test_request_id_is_echoed_and_credentials_are_checked(
    channel: grpc.aio.Channel, address: str
) -> None:
    call = method(channel, "Echo")(b"hi", metadata=((REQUEST_ID_KEY, "abc-1"),))
    assert await call == b"hi"
    assert ("x-request-id", "abc-1") in list(await call.trailing_metadata())
    async with open_channel(address, "not-the-token-" + "x" * 30) as wrong:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(wrong, "Echo")(b"hi")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unreachable_database_is_unavailable_not_internal() -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(ServiceError) as caught:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await db.close()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1" not in caught.value.message
