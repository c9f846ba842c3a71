"""Errors a service raises on purpose, and their translation to rich gRPC statuses.

A handler raises ServiceError (or one of the helpers below); the server interceptor turns it into
a google.rpc.Status with an ErrorInfo, which the gateway turns into an HTTP status and JSON body.
Anything else that escapes a handler is logged in full and answered as a bare INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tunelab.common.v1 import errors_pb2

Reason: TypeAlias = errors_pb2.ErrorReason.ValueType


def reason_name(reason: Reason) -> str:
    """ERROR_REASON_TOKEN_EXPIRED -> TOKEN_EXPIRED, as ErrorInfo.reason carries it."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


@dataclass
class ServiceError(Exception):
    code: grpc.StatusCode
    message: str
    reason: Reason = errors_pb2.ERROR_REASON_UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def to_status(self, domain: str) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.reason), domain=domain, metadata=dict(self.metadata)
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=_CODE[self.code], message=self.message, details=[detail])
        result: grpc.Status = rpc_status.to_status(status)
        return result


def invalid_argument(field_name: str, message: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
        {"field": field_name},
    )


def required_id(value: str, field_name: str, limit: int = 64) -> str:
    """An id the request must carry, no longer than ids are."""
    if not value:
        raise invalid_argument(field_name, f"{field_name} is required")
    if len(value) > limit:
        raise invalid_argument(field_name, f"{field_name} is longer than {limit} characters")
    return value


def not_found(kind: str, ident: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"{kind} {ident!r} not found",
        errors_pb2.ERROR_REASON_NOT_FOUND,
        {"kind": kind},
    )


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAUTHENTICATED, message, errors_pb2.ERROR_REASON_UNAUTHENTICATED
    )


def payload_too_large(limit: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the file is larger than the {limit}-byte limit for one dataset; split it",
        errors_pb2.ERROR_REASON_PAYLOAD_TOO_LARGE,
        {"limit_bytes": str(limit)},
    )


def storage_unavailable() -> ServiceError:
    """Stored bytes are missing or not what was stored; the details go to the log only."""
    return ServiceError(
        grpc.StatusCode.DATA_LOSS,
        "the stored file is unavailable; this has been logged for the operators",
        errors_pb2.ERROR_REASON_STORAGE_UNAVAILABLE,
    )


def storage_down() -> ServiceError:
    """The object storage cannot be reached right now (StorageUnavailable): nothing was stored
    or sent, and the same request should work once it is back."""
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "file storage is unreachable right now; nothing was changed, retry shortly",
        errors_pb2.ERROR_REASON_STORAGE_UNAVAILABLE,
        {"retry_after_seconds": "5"},
    )


def internal(request_id: str, where: str = "service") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INTERNAL,
        f"internal error; the {where} log has the details under request id {request_id}",
        errors_pb2.ERROR_REASON_INTERNAL,
    )


_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: code_pb2.OK,
    grpc.StatusCode.CANCELLED: code_pb2.CANCELLED,
    grpc.StatusCode.UNKNOWN: code_pb2.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE: code_pb2.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: code_pb2.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}


@dataclass(frozen=True)
class RemoteError:
    """A failed call as a client sees it: code, message and the ErrorInfo, if any."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> RemoteError:
        message = error.details() or ""
        status = rpc_status.from_call(error)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return cls(error.code(), message, info.reason, info.domain, dict(info.metadata))
        return cls(error.code(), message)
