"""Outbound gRPC: channels with retries declared in the service config, and an interceptor that
puts a deadline on every call and forwards the credential, the user and the request id.

    channel = open_channel(address, internal_token, retry={"tunelab.datasets.v1.DatasetsService":
                                                           ["GetDataset", "ListDatasets"]})
    stub = DatasetsServiceStub(channel)           # typed by the generated .pyi
    await stub.GetDataset(request)                # deadline, metadata added for you

The user comes from the `caller` context variable: set by the gateway for its request, and by a
service's own server interceptor for the call it is serving, so it flows through without effort.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from services.common import context
from services.common.identity import INTERNAL_TOKEN_KEY, REQUEST_ID_KEY, USER_KEY
from services.common.server import MAX_MESSAGE_BYTES

DEFAULT_TIMEOUT_SECONDS = 10.0


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
) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", service_config(retry or {})),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ],
        interceptors=outbound_interceptors(internal_token, timeout),
    )


class _Outbound:
    """Adds the deadline and the metadata to a call's details."""

    def __init__(self, internal_token: str, timeout: float) -> None:
        self._token = internal_token
        self._timeout = timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[INTERNAL_TOKEN_KEY] = self._token
        if metadata.get(USER_KEY) is None and (user := context.caller.get()):
            metadata[USER_KEY] = user.encode()
        if metadata.get(REQUEST_ID_KEY) is None and (rid := context.request_id.get()):
            metadata[REQUEST_ID_KEY] = rid
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files each interceptor under the first call kind it implements, so each kind
# needs an object of its own.
class _UnaryUnary(_Outbound, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Outbound, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Outbound, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Outbound, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def outbound_interceptors(internal_token: str, timeout: float) -> list[grpc.aio.ClientInterceptor]:
    return [
        kind(internal_token, timeout)
        for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
