"""POST /v1/datasets?name=N: the raw request body streams into DatasetsService.UploadDataset.

The body is re-cut into messages of about 1 MiB (uvicorn hands it over in small pieces, and every
gRPC message has a fixed cost) and never held whole; if the client goes away mid-upload, the
call is cancelled and the service discards what it had received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import error_response, from_rpc_error
from gateway.transcode import BadRequest, to_json
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

MESSAGE_BYTES = 1 << 20


class Uploads:
    def __init__(self, stub: api_grpc.DatasetsServiceAsyncStub, timeout: float) -> None:
        self._stub = stub
        self._timeout = timeout

    async def __call__(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        if not name:
            return BadRequest(
                "give the dataset's name: POST /v1/datasets?name=train.jsonl", "name"
            ).response()
        if request.headers.get("content-type", "").startswith("multipart/"):
            return error_response(
                415,
                grpc.StatusCode.INVALID_ARGUMENT,
                "send the file as the raw request body (curl --data-binary @file), not as a form",
                reason="INVALID_ARGUMENT",
            )
        try:
            reply = await self._stub.UploadDataset(
                _messages(name, request.stream()), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, "datasets")
        body = to_json(reply.dataset)
        return JSONResponse(
            body, status_code=201, headers={"Location": f"/v1/datasets/{reply.dataset.id}"}
        )


async def _messages(
    name: str, body: AsyncIterator[bytes]
) -> AsyncIterator[api.UploadDatasetRequest]:
    yield api.UploadDatasetRequest(name=name)
    pending = bytearray()
    async for piece in body:
        pending += piece
        if len(pending) >= MESSAGE_BYTES:
            yield api.UploadDatasetRequest(chunk=bytes(pending))
            pending.clear()
    if pending:
        yield api.UploadDatasetRequest(chunk=bytes(pending))
