"""Reading request bodies with their limits: size (after decompression: a small gzip body that
inflates to gigabytes stops at the limit), Content-Encoding and Content-Type.

Every refusal is a `Refusal` that carries its HTTP answer: 413 past the limit, 415 for an
encoding or media type the route does not take (RFC 9110 15.5.16), 400 for a broken gzip body.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection

import grpc
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import error_response, service_error_response
from services.common.errors import payload_too_large

GZIP = "gzip"
# Bodies a JSON route takes as JSON: curl -d sends a form type, and some clients send text.
JSON_TYPES = ("", "application/json", "application/x-www-form-urlencoded", "text/plain")


class Refusal(Exception):
    """A request the gateway refuses itself, before any service sees it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self._response = response

    def response(self) -> Response:
        return self._response


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_json_type(request: Request) -> None:
    media = media_type(request)
    if media in JSON_TYPES or media.endswith("+json"):
        return
    raise Refusal(unsupported(f"this route takes a JSON body, not {media}"))


def check_identity(request: Request) -> None:
    """For the routes whose body is a file, stored as sent: no content coding."""
    encoding = _encoding(request)
    if encoding != "identity":
        raise Refusal(
            unsupported(f"Content-Encoding {encoding!r} is not accepted here: send the file as is")
        )


async def read_body(request: Request, limit: int, encodings: Collection[str] = (GZIP,)) -> bytes:
    """The whole body, decompressed; at most `limit` bytes either side of decompression."""
    encoding = _encoding(request)
    if encoding != "identity" and encoding not in encodings:
        accepted = " or ".join([*encodings, "none"])
        raise Refusal(
            unsupported(f"Content-Encoding {encoding!r} is not supported: send {accepted}")
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(service_error_response(payload_too_large(limit)))
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == GZIP else None
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if inflate is not None:
            if inflate.eof and chunk:
                raise _broken("the gzip body has data after its end")
            try:
                chunk = inflate.decompress(chunk, limit + 1 - len(body))
            except zlib.error:
                raise _broken("the body is not valid gzip") from None
            if inflate.unconsumed_tail:  # more output than the limit allows
                raise Refusal(service_error_response(payload_too_large(limit)))
        body += chunk
        if len(body) > limit or received > limit:
            raise Refusal(service_error_response(payload_too_large(limit)))
    if inflate is not None and not inflate.eof:
        raise _broken("the gzip body is cut short, or is not gzip")
    if inflate is not None and inflate.unused_data:
        raise _broken("the gzip body has data after its end")
    return bytes(body)


def unsupported(message: str) -> Response:
    return error_response(
        415, grpc.StatusCode.INVALID_ARGUMENT, message, reason="UNSUPPORTED_MEDIA_TYPE"
    )


def _encoding(request: Request) -> str:
    return request.headers.get("content-encoding", "identity").strip().lower() or "identity"


def _broken(message: str) -> Refusal:
    return Refusal(
        error_response(400, grpc.StatusCode.INVALID_ARGUMENT, message, reason="INVALID_ARGUMENT")
    )
