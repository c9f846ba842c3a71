"""The one server interceptor every service installs.

For each RPC it: takes or makes the request id; checks the internal token and takes the calling
user from metadata (health and reflection stay open for probes and tools); turns a ServiceError
into a rich status and any other exception into a logged INTERNAL that leaks nothing; and records
one log line and the Prometheus metrics with the final status code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc

from services.common import context
from services.common.blobstore import StorageUnavailable
from services.common.errors import ServiceError, internal, storage_down, unauthenticated
from services.common.identity import (
    INTERNAL_TOKEN_KEY,
    REQUEST_ID_KEY,
    USER_KEY,
    decode_user,
    token_matches,
)
from services.common.metrics import GRPC_HANDLED, GRPC_SECONDS
from tunelab.common.v1 import errors_pb2

log = logging.getLogger("tunelab.rpc")

# Probes and tools call these without credentials; they reveal nothing about anyone's data.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# Values are str, or bytes for binary ("-bin") keys.
Metadata: TypeAlias = Mapping[str, str | bytes]


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, *, domain: str, internal_token: str) -> None:
        self._domain = domain
        self._token = internal_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        metadata: Metadata = dict(handler_call_details.invocation_metadata or ())
        return _wrap(handler, functools.partial(self._scope, method, metadata))

    @asynccontextmanager
    async def _scope(
        self, method: str, metadata: Metadata, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        rid = context.accept_request_id(_text(metadata, REQUEST_ID_KEY))
        context.request_id.set(rid)
        context.caller.set("")
        ctx.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        service, _, name = method.lstrip("/").rpartition("/")
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if not method.startswith(_OPEN_SERVICES):
                self._authenticate(metadata)
            yield
            code = ctx.code() or grpc.StatusCode.OK
        except ServiceError as exc:
            code = exc.code
            await ctx.abort_with_status(exc.to_status(self._domain))
        except StorageUnavailable as exc:
            code = grpc.StatusCode.UNAVAILABLE
            log.warning("storage unavailable", extra={"method": method, "error": str(exc)})
            await ctx.abort_with_status(storage_down().to_status(self._domain))
        except grpc.aio.AbortError:
            code = ctx.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra={"method": method})
            await ctx.abort_with_status(internal(rid).to_status(self._domain))
        finally:
            seconds = time.perf_counter() - started
            GRPC_HANDLED.labels(service, name, code.name).inc()
            GRPC_SECONDS.labels(service, name).observe(seconds)
            if not method.startswith(_OPEN_SERVICES):
                log.info(
                    "rpc",
                    extra={"method": method, "code": code.name, "ms": round(seconds * 1000, 2)},
                )

    def _authenticate(self, metadata: Metadata) -> None:
        if not token_matches(_text(metadata, INTERNAL_TOKEN_KEY), self._token):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong internal credential: callers send the {INTERNAL_TOKEN_KEY} "
                "metadata (the gateway and the services do this for you)",
                errors_pb2.ERROR_REASON_INTERNAL_CREDENTIAL,
            )
        user = decode_user(metadata.get(USER_KEY))
        if user == "":
            raise unauthenticated(
                f"malformed {USER_KEY}: UTF-8, 1 to 255 characters, no control ones"
            )
        context.caller.set(user or "")


def _text(metadata: Metadata, key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


Scope = Callable[[grpc.aio.ServicerContext[Any, Any]], Any]


def _wrap(handler: Handler, scope: Scope) -> Handler:
    """The same handler with each of its behaviours run inside `scope`."""

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with scope(ctx):
                return await behavior(request, ctx)

        return run

    def streaming(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with scope(ctx):
                async for item in behavior(request, ctx):
                    yield item

        return run

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)
    return handler
