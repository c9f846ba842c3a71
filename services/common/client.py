"""Outbound gRPC: channels with retries declared in the service config, and an interceptor that
puts a deadline on every call and forwards the credential, the user and the request id.

    channel = open_channel(address, internal_token, retry={"tunelab.datasets.v1.DatasetsService":
                                                           ["GetDataset", "ListDatasets"]})
    stub = DatasetsServiceStub(channel)           # typed by the generated .pyi
    await stub.GetDataset(request)                # deadline, metadata added for you
    stub.ExportSpans(request, timeout=6 * 3600)   # a stream states its own deadline

Deadlines: a unary call without one gets the channel's short default. A streaming call must
state one sized to the stream (a watch, an export, an upload); without one it is refused at
once (StreamDeadlineMissing), so that no stream ever inherits the unary default by accident
and is cut mid-way, and none runs with no deadline at all.

Starting order: a call made while the channel is still connecting (the service is starting,
or restarting) waits for it, up to `ready_wait` seconds and within the call's deadline, instead
of failing at once with UNAVAILABLE. Waiting is safe for every call, idempotent or not: nothing
has been sent yet. A call sent just as its peer died (the channel still looked ready) fails
with UNAVAILABLE; an idempotent unary call then waits for the channel in the same way and is
made once more, so a restart is not a 503 either way. The reconnect backoff is kept short (the
peers are on the same network), so that a restarted service is found within a second of
listening.

The user comes from the `caller` context variable: set by the gateway for its request, and by a
service's own server interceptor for the call it is serving, so it flows through without effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence, Set
from typing import Any

import grpc

from services.common import context
from services.common.identity import INTERNAL_TOKEN_KEY, REQUEST_ID_KEY, USER_KEY
from services.common.server import MAX_MESSAGE_BYTES

DEFAULT_TIMEOUT_SECONDS = 10.0
READY_WAIT_SECONDS = 5.0
# grpc's defaults (1 s growing to 120 s) suit a far-away server; these services are near. At
# most 1 s between attempts, so a service that is up is found well within READY_WAIT_SECONDS.
RECONNECT_BACKOFF_MS = (100, 1000)


class StreamDeadlineMissing(ValueError):
    """A streaming call was made without a deadline of its own."""


def service_config(retry: Mapping[str, Sequence[str]]) -> str:
    """Retry UNAVAILABLE with backoff, only for the methods listed as idempotent."""
    names = [{"service": svc, "method": m} for svc, methods in retry.items() for m in methods]
    config: dict[str, Any] = {"methodConfig": []}
    if names:
        config["methodConfig"].append(
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


def open_channel(
    address: str,
    internal_token: str,
    *,
    retry: Mapping[str, Sequence[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ready_wait: float = READY_WAIT_SECONDS,
) -> grpc.aio.Channel:
    """`timeout`: the deadline of unary calls that set none. `ready_wait`: how long a call
    waits for a channel that is still connecting (0: not at all)."""
    idempotent = {f"/{svc}/{m}" for svc, methods in (retry or {}).items() for m in methods}
    interceptors = outbound_interceptors(internal_token, timeout, ready_wait, idempotent)
    channel = grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", service_config(retry or {})),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
        ],
        interceptors=interceptors,
    )
    for interceptor in interceptors:
        assert isinstance(interceptor, _Outbound)
        interceptor.channel = channel
    return channel


class _Outbound:
    """Adds the deadline and the metadata to a call's details, once the channel is ready."""

    streaming = True
    channel: grpc.aio.Channel | None = None

    def __init__(
        self,
        internal_token: str,
        timeout: float,
        ready_wait: float,
        idempotent: frozenset[str] = frozenset(),
    ) -> None:
        self._token = internal_token
        self._timeout = timeout
        self._ready_wait = ready_wait
        self._idempotent = idempotent

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout
        if timeout is None:
            if self.streaming:
                name = details.method
                name = name.decode() if isinstance(name, bytes) else name
                raise StreamDeadlineMissing(
                    f"{name} streams: give the call a deadline sized to the stream"
                )
            timeout = self._timeout
        timeout = await self._wait_ready(timeout)
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[INTERNAL_TOKEN_KEY] = self._token
        if metadata.get(USER_KEY) is None and (user := context.caller.get()):
            metadata[USER_KEY] = user.encode()
        if metadata.get(REQUEST_ID_KEY) is None and (rid := context.request_id.get()):
            metadata[REQUEST_ID_KEY] = rid
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def _wait_ready(self, deadline: float) -> float:
        """Wait for a connecting channel (within `deadline` seconds); the seconds left."""
        channel = self.channel
        if channel is None or self._ready_wait <= 0:
            return deadline
        if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return deadline
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), min(self._ready_wait, deadline))
        # Not ready in time: the call goes ahead and fails as UNAVAILABLE, as it would have.
        return max(deadline - (loop.time() - started), 0.001)


# grpc.aio files each interceptor under the first call kind it implements, so each kind
# needs an object of its own.
class _UnaryUnary(_Outbound, grpc.aio.UnaryUnaryClientInterceptor):
    streaming = False

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        channel = self.channel
        # Only a call that found the channel ready waits after failing: one that already waited
        # for it is not kept waiting twice.
        was_ready = channel is not None and channel.get_state() is grpc.ChannelConnectivity.READY
        sent = await self._details(details)
        call = await continuation(sent, request)
        name = details.method.decode() if isinstance(details.method, bytes) else details.method
        if not was_ready or name not in self._idempotent:
            return call
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            left = (sent.timeout or self._timeout) - (loop.time() - started)
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or left <= 0.001:
                return call
            # The peer went away under the call (grpc's own retries came too soon to see it
            # back): wait for the channel as a first call would, then once more.
            return await continuation(
                grpc.aio.ClientCallDetails(
                    method=sent.method,
                    timeout=await self._wait_ready(left),
                    metadata=sent.metadata,
                    credentials=sent.credentials,
                    wait_for_ready=sent.wait_for_ready,
                ),
                request,
            )
        return call


class _UnaryStream(_Outbound, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._details(details), request)


class _StreamUnary(_Outbound, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(await self._details(details), requests)


class _StreamStream(_Outbound, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(await self._details(details), requests)


def outbound_interceptors(
    internal_token: str, timeout: float, ready_wait: float = 0.0, idempotent: Set[str] = frozenset()
) -> list[grpc.aio.ClientInterceptor]:
    """`idempotent`: full method names ("/package.Service/Method") that may be made again."""
    return [
        kind(internal_token, timeout, ready_wait, frozenset(idempotent))
        for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
