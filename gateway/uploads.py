"""POST /v1/datasets?name=N: the raw request body streams into DatasetsService.UploadDataset.

The body is re-cut into messages of about 1 MiB (uvicorn hands it over in small pieces, and every
gRPC message has a fixed cost) and never held whole; if the client goes away mid-upload, the
call is cancelled and the service discards what it had received. A body over the size limit is
refused from its Content-Length before anything is sent on, or, sent without one, as soon as it
passes the limit: forwarding stops there and the service answers why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.bodies import Refusal, check_identity, unsupported
from gateway.errors import from_rpc_error, service_error_response
from gateway.transcode import BadRequest, to_json
from services.common.errors import ServiceError, payload_too_large
from services.common.filenames import check_name
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

log = logging.getLogger(__name__)

# What a streamed upload is re-cut into for gRPC. Measured with 1 GiB through the suite on this
# machine: ~120 MB/s with 1 MiB messages, ~170 MB/s with 4 MiB, ~185 MB/s with 8 MiB (the
# per-message work on both sides shrinks); 4 MiB keeps most of that at half the memory held per
# upload (under the services' 16 MiB message limit).
MESSAGE_BYTES = 4 << 20


class Uploads:
    def __init__(
        self, stub: api_grpc.DatasetsServiceAsyncStub, timeout: float, max_bytes: int
    ) -> None:
        self._stub = stub
        self._timeout = timeout
        self._max = max_bytes

    async def __call__(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        if not name:
            return BadRequest(
                "give the dataset's name: POST /v1/datasets?name=train.jsonl", "name"
            ).response()
        try:  # before a byte is sent on: a bad name must not cost a 20 GB upload to learn of
            check_name(name)
        except ServiceError as exc:
            return service_error_response(exc)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/", "application/x-www-form-urlencoded")):
            # A form body is not the file: curl -d even strips its newlines.
            return unsupported(
                "send the file as the raw request body (curl -T FILE -X POST ...), not as a form "
                "(curl -d and -F send forms; -d also strips the newlines between rows)"
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max:
            return service_error_response(payload_too_large(self._max))
        try:
            check_identity(request)
        except Refusal as exc:
            return exc.response()
        gone = asyncio.Event()
        try:
            reply = await self._stub.UploadDataset(
                self._messages(name, request.stream(), gone), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, "datasets")
        except asyncio.CancelledError:
            if client_left(gone):
                return Response(status_code=499)
            raise
        return JSONResponse(
            to_json(reply.dataset),
            status_code=201,
            headers={"Location": f"/v1/datasets/{reply.dataset.id}"},
        )

    async def _messages(
        self, name: str, body: AsyncIterator[bytes], gone: asyncio.Event
    ) -> AsyncIterator[api.UploadDatasetRequest]:
        yield api.UploadDatasetRequest(name=name)
        async for chunk in body_chunks(body, gone, self._max):
            yield api.UploadDatasetRequest(chunk=chunk)


async def body_chunks(
    body: AsyncIterator[bytes], gone: asyncio.Event, max_bytes: int
) -> AsyncIterator[bytes]:
    """A request body re-cut into messages of about MESSAGE_BYTES; it stops once past
    `max_bytes` (the service has seen enough to refuse it), and sets `gone` if the client
    disconnects."""
    pending = bytearray()
    sent = 0
    while True:
        try:
            piece = await anext(body)
        except StopAsyncIteration:
            break
        except ClientDisconnect:
            gone.set()
            raise
        pending += piece
        if len(pending) >= MESSAGE_BYTES:
            yield bytes(pending)
            sent += len(pending)
            pending.clear()
            if sent > max_bytes:
                return
    if pending:
        yield bytes(pending)


def client_left(gone: asyncio.Event) -> bool:
    """For an upload call that was cancelled: whether the client left mid-upload (gRPC
    cancelled the call; the service discards the partial file), so that a 499 nobody reads is
    the answer. Otherwise this task itself was cancelled (shutdown), and that must propagate."""
    task = asyncio.current_task()
    if gone.is_set() and task is not None and not task.cancelling():
        log.info("client went away during an upload")
        return True
    return False
