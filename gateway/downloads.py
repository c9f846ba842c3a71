"""GET|HEAD /v1/dataset-downloads/{token}: the token is the credential.

The datasets service decides (token valid? which bytes? one use counted, attempt audited);
the bytes then stream from its blob store straight to the client, and the gateway reports back
how many were sent: the audit log shows it, and a download that sent nothing gives its use
back. The bytes never cross gRPC: measured here, a gRPC stream of file chunks ran at about a
quarter of nginx's speed on loopback, while reading the file in this process keeps pace with
it (bench/transfer.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from urllib.parse import quote

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import remote_error_response, service_error_response
from services.common.blobstore import BlobError, LocalBlobStore, OpenBlob, read_range
from services.common.errors import RemoteError, storage_unavailable
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-ndjson"


class Downloads:
    def __init__(
        self, stub: api_grpc.DatasetsServiceAsyncStub, blobs: LocalBlobStore, chunk_bytes: int
    ) -> None:
        self._stub = stub
        self._blobs = blobs
        self.chunk_bytes = chunk_bytes
        self._reporting: set[asyncio.Task[None]] = set()

    async def __call__(self, request: Request) -> Response:
        try:
            grant = await self._stub.RedeemDownloadToken(
                api.RedeemDownloadTokenRequest(
                    token=request.path_params["token"],
                    http_method=request.method,
                    range=request.headers.get("range", ""),
                    if_range=request.headers.get("if-range", ""),
                    client_ip=request.client.host if request.client else "",
                    user_agent=request.headers.get("user-agent", ""),
                )
            )
        except grpc.aio.AioRpcError as exc:
            remote = RemoteError.from_rpc_error(exc)
            response = remote_error_response(remote, "datasets")
            if size := remote.metadata.get("size"):  # a 416
                response.headers["Content-Range"] = f"bytes */{size}"
            return response

        headers = _headers(grant)
        status = 206 if grant.partial else 200
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        try:
            blob = await asyncio.to_thread(self._blobs.open, grant.blob_key)
        except BlobError as exc:
            self.report(grant.grant_id, 0)
            return _storage_error(grant.dataset_id, str(exc))
        if blob.size != grant.size_bytes:
            blob.close()
            self.report(grant.grant_id, 0)
            return _storage_error(grant.dataset_id, f"size {blob.size} != {grant.size_bytes}")
        return _BlobResponse(self, blob, grant, status, headers)

    def report(self, grant_id: str, sent: int) -> None:
        """Tell the service how many bytes the download sent. In the background: the client
        is gone or done, and nothing should wait for this."""
        task = asyncio.get_running_loop().create_task(self._finish(grant_id, sent))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def _finish(self, grant_id: str, sent: int) -> None:
        try:
            await self._stub.FinishDownload(
                api.FinishDownloadRequest(grant_id=grant_id, bytes_sent=sent)
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "could not report a finished download: the audit lacks its bytes sent, and "
                "one that sent nothing keeps its use",
                extra={"grant_id": grant_id, "code": exc.code().name},
            )

    async def drain(self) -> None:
        """Wait for the reports still on their way (at shutdown)."""
        await asyncio.gather(*self._reporting, return_exceptions=True)


class _BlobResponse(StreamingResponse):
    """Streams a granted range of a blob; whatever way the response ends (done, client gone,
    cancelled), it closes the file and reports the bytes sent, once."""

    def __init__(
        self,
        downloads: Downloads,
        blob: OpenBlob,
        grant: api.RedeemDownloadTokenResponse,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self._downloads = downloads
        self._grant_id = grant.grant_id
        self._blob = blob
        self._sent = 0
        chunks = self._chunks(downloads.chunk_bytes, grant)
        super().__init__(chunks, status_code=status, headers=headers)

    async def _chunks(
        self, chunk: int, grant: api.RedeemDownloadTokenResponse
    ) -> AsyncIterator[bytes]:
        async for data in read_range(self._blob, grant.offset, grant.length, chunk):
            yield data
            self._sent += len(data)  # the server has taken it for the connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if isinstance(body, AsyncGenerator):
                await body.aclose()  # its reads are settled: no thread holds the descriptor
            self._blob.close()
            self._downloads.report(self._grant_id, self._sent)


def _headers(grant: api.RedeemDownloadTokenResponse) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(grant.sha256)).decode()
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(grant.length),
        "Content-Disposition": _disposition(grant.name),
        "Accept-Ranges": "bytes",
        "ETag": grant.etag,
        "Last-Modified": grant.last_modified,
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Checksum-Sha256": grant.sha256,
        "Cache-Control": "private, no-store",
        "Referrer-Policy": "no-referrer",
        "X-Download-Uses-Left": str(grant.remaining_uses),
    }
    if grant.partial:
        last = grant.offset + grant.length - 1
        headers["Content-Range"] = f"bytes {grant.offset}-{last}/{grant.size_bytes}"
    return headers


def _disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback and the exact UTF-8 name; quotes and controls can't get in."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _storage_error(dataset_id: str, detail: str) -> Response:
    log.error("cannot serve stored blob", extra={"dataset_id": dataset_id, "error": detail})
    return service_error_response(storage_unavailable())
