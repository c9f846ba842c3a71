"""gRPC status to HTTP status (grpc-gateway's table) and the JSON error body.

{"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "reason": "NOT_FOUND",
           "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}],
           "request_id": "..."}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
from starlette.responses import JSONResponse

from services.common import context
from services.common.errors import RemoteError, ServiceError, reason_name

log = logging.getLogger(__name__)

GATEWAY_DOMAIN = "gateway.tunelab.dev"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Reasons with a more precise HTTP status than their gRPC code's.
REASON_STATUS = {
    "PAYLOAD_TOO_LARGE": 413,
    "RANGE_NOT_SATISFIABLE": 416,
}

# What to say when a transport failure has no message of the service's own.
_TRANSPORT = {
    grpc.StatusCode.UNAVAILABLE: "the {service} service is unavailable; retry shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {service} service did not answer in time; retry",
}


def error_response(
    status: int,
    grpc_code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    domain: str = "",
    metadata: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    details = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": domain or GATEWAY_DOMAIN,
                "metadata": dict(metadata or {}),
            }
        )
    body = {
        "error": {
            "code": status,
            "status": grpc_code.name,
            "message": message,
            "reason": reason,
            "details": details,
            "request_id": context.request_id.get(),
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> JSONResponse:
    return remote_error_response(RemoteError.from_rpc_error(error), service)


def service_error_response(error: ServiceError) -> JSONResponse:
    """A refusal the gateway makes itself, with the same builders and mapping the services use."""
    remote = RemoteError(
        error.code, error.message, reason_name(error.reason), GATEWAY_DOMAIN, error.metadata
    )
    return remote_error_response(remote, "gateway")


def remote_error_response(remote: RemoteError, service: str) -> JSONResponse:
    if remote.reason == "INTERNAL_CREDENTIAL":
        # Our own credentials were refused: a deployment fault. A 401 would tell the client
        # its (valid) token is bad, and the message names internals.
        log.error("the %s service refused the gateway's internal credential", service)
        return error_response(
            500,
            grpc.StatusCode.INTERNAL,
            "the gateway is misconfigured; the operators have been alerted",
            reason="INTERNAL",
        )
    status = REASON_STATUS.get(remote.reason) or HTTP_STATUS.get(remote.code, 500)
    message = remote.message
    if not remote.reason:
        # Not an answer of the service's own making: a transport failure or a crash. Its text
        # may carry internals (addresses, stack snippets); say what happened in our words.
        log.warning("upstream failure", extra={"service": service, "code": remote.code.name})
        message = _TRANSPORT.get(remote.code, "the {service} service failed; retry later").format(
            service=service
        )
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if status in (429, 503) and (after := remote.metadata.get("retry_after_seconds")):
        # The service says when to retry (storage down: an upload, an output): so do we.
        headers["Retry-After"] = after
    return error_response(
        status,
        remote.code,
        message,
        reason=remote.reason,
        domain=remote.domain,
        metadata=remote.metadata,
        headers=headers,
    )
