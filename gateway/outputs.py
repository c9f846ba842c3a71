"""A run's trained output: the pod PUTs it (its job token is the bearer), the owner GETs it.

Both stream: the body is forwarded to DeployService.UploadOutput in messages of about 1 MiB,
and DownloadOutput's chunks are written out as they come, so memory stays flat whatever the
model's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.bodies import Refusal, check_identity
from gateway.errors import from_rpc_error, service_error_response
from gateway.transcode import ASK_FOR_JOB_CREDENTIAL, bearer_token, to_json
from gateway.uploads import body_chunks, client_left
from services.common.errors import payload_too_large, unauthenticated
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deploy_service_pb2_grpc as api_grpc

ROUTE = "/v1/deployments/{deployment_id}/output"


class Outputs:
    def __init__(
        self, stub: api_grpc.DeployServiceAsyncStub, timeout: float, max_bytes: int
    ) -> None:
        self._stub = stub
        self._timeout = timeout
        self._max = max_bytes

    async def upload(self, request: Request) -> Response:
        token = bearer_token(request)
        if not token:
            return service_error_response(unauthenticated(ASK_FOR_JOB_CREDENTIAL))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max:
            return service_error_response(payload_too_large(self._max))
        try:
            check_identity(request)
        except Refusal as exc:
            return exc.response()
        first = api.UploadOutputRequest(
            deployment_id=request.path_params["deployment_id"], job_token=token
        )
        gone = asyncio.Event()

        async def messages() -> AsyncIterator[api.UploadOutputRequest]:
            yield first
            async for chunk in body_chunks(request.stream(), gone, self._max):
                yield api.UploadOutputRequest(chunk=chunk)

        try:
            reply = await self._stub.UploadOutput(messages(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, "deploy")
        except asyncio.CancelledError:
            if client_left(gone):
                return Response(status_code=499)
            raise
        return JSONResponse(to_json(reply.output), status_code=201)

    async def download(self, request: Request) -> Response:
        deployment_id = request.path_params["deployment_id"]
        call: Any = self._stub.DownloadOutput(
            api.DownloadOutputRequest(deployment_id=deployment_id), timeout=self._timeout
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc, "deploy")
        output = first.output
        headers = {
            "Content-Length": str(output.size_bytes),
            "Content-Disposition": f'attachment; filename="{deployment_id}-output.tar.gz"',
            "ETag": f'"{output.sha256}"',
            "X-Checksum-Sha256": output.sha256,
        }

        async def body() -> AsyncIterator[bytes]:
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    yield message.chunk
            finally:
                call.cancel()

        return StreamingResponse(body(), media_type="application/gzip", headers=headers)
