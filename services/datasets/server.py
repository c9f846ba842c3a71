"""The DatasetsService gRPC servicer: checks and mapping; the work is in the modules it calls."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc

from services.common import context as request_context
from services.common.blobstore import BlobError, BlobStore, StorageUnavailable
from services.common.errors import ServiceError, invalid_argument, storage_down
from services.common.filenames import check_name
from services.common.identity import require_user
from services.common.pagination import page_size
from services.datasets import convert, ranges, upload
from services.datasets.settings import MAX_TOKEN_TTL_SECONDS, MAX_TOKEN_USES, DatasetsSettings
from services.datasets.store import Dataset, DatasetStore, DownloadRequest
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]
# A URL the gateway may GET a blob from for this many seconds.
Presign = Callable[[str, int], Awaitable[str]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class DatasetsServicer(api_grpc.DatasetsServiceServicer):
    def __init__(
        self,
        store: DatasetStore,
        blobs: BlobStore,
        presign: Presign,
        settings: DatasetsSettings,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.presign = presign
        self.settings = settings
        self.clock = clock

    async def UploadDataset(
        self, request_iterator: AsyncIterator[api.UploadDatasetRequest], context: Context
    ) -> api.UploadDatasetResponse:
        owner = require_user()
        try:
            name, received = await self._receive(request_iterator)
        except ServiceError:
            # Refused while the client is still sending: a gRPC client whose send fails reports
            # that failure (INTERNAL) instead of our status, so read the rest, discarding it, up
            # to the size limit (past that, the client gets what it gets).
            budget = self.settings.max_upload_bytes
            async for message in request_iterator:
                budget -= len(message.chunk)
                if budget < 0:
                    break
            raise
        try:
            dataset = await self.store.create_dataset(
                owner=owner,
                name=name,
                analysis=received.analysis,
                size_bytes=received.size_bytes,
                sha256=received.sha256,
                blob_key=received.blob_key,
                now=self.clock(),
            )
        except BaseException:
            await self.blobs.delete(received.blob_key)
            raise
        log.info(
            "dataset stored",
            extra={
                "dataset_id": dataset.id,
                "size_bytes": dataset.size_bytes,
                "format": dataset.format.value,
            },
        )
        return api.UploadDatasetResponse(dataset=convert.dataset(dataset))

    async def _receive(
        self, request_iterator: AsyncIterator[api.UploadDatasetRequest]
    ) -> tuple[str, upload.Received]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "name":
            raise invalid_argument("name", "the first message of an upload carries the name")
        name = check_name(first.name)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise invalid_argument("chunk", "only the first message carries a name")
                yield message.chunk

        try:
            received = await upload.receive(
                chunks(),
                self.blobs,
                max_bytes=self.settings.max_upload_bytes,
                max_line_bytes=self.settings.max_line_bytes,
            )
        except StorageUnavailable as exc:  # a ServiceError, so that the rest is drained
            log.warning("upload refused: storage unavailable", extra={"error": str(exc)})
            raise storage_down() from None
        return name, received

    async def GetDataset(
        self, request: api.GetDatasetRequest, context: Context
    ) -> api.GetDatasetResponse:
        dataset = await self.store.get_dataset(require_user(), request.dataset_id)
        return api.GetDatasetResponse(dataset=convert.dataset(dataset))

    async def ListDatasets(
        self, request: api.ListDatasetsRequest, context: Context
    ) -> api.ListDatasetsResponse:
        page = await self.store.list_datasets(
            require_user(), page_size(request.page_size), request.page_token
        )
        return api.ListDatasetsResponse(
            datasets=[convert.dataset(d) for d in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteDataset(
        self, request: api.DeleteDatasetRequest, context: Context
    ) -> api.DeleteDatasetResponse:
        dataset = await self.store.delete_dataset(require_user(), request.dataset_id)
        try:
            await self.blobs.delete(dataset.blob_key)
        except (OSError, BlobError) as exc:  # the record is gone: the caller's delete succeeded
            log.error(
                "dataset file left behind; reconciliation will remove it",
                extra={"dataset_id": dataset.id, "error": str(exc)},
            )
        log.info("dataset deleted", extra={"dataset_id": dataset.id})
        return api.DeleteDatasetResponse()

    async def CreateDownloadToken(
        self, request: api.CreateDownloadTokenRequest, context: Context
    ) -> api.CreateDownloadTokenResponse:
        owner = require_user()
        ttl = request.ttl_seconds or MAX_TOKEN_TTL_SECONDS
        if not 1 <= ttl <= MAX_TOKEN_TTL_SECONDS:
            raise invalid_argument(
                "ttl_seconds",
                f"ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS} (two hours); "
                "leave it out for the maximum",
            )
        uses = request.max_uses or 1
        if not 1 <= uses <= MAX_TOKEN_USES:
            raise invalid_argument(
                "max_uses", f"max_uses must be between 1 and {MAX_TOKEN_USES}; leave it out for 1"
            )
        minted = await self.store.create_token(
            owner, request.dataset_id, ttl=timedelta(seconds=ttl), max_uses=uses, now=self.clock()
        )
        log.info(
            "download token minted",
            extra={"token_id": minted.token.id, "dataset_id": request.dataset_id, "ttl_s": ttl},
        )
        return api.CreateDownloadTokenResponse(
            token_id=minted.token.id,
            token=minted.secret,
            url=f"{self.settings.public_url.rstrip('/')}/v1/dataset-downloads/{minted.secret}",
            expires_at=convert.timestamp(minted.token.expires_at),
            max_uses=minted.token.max_uses,
        )

    async def ListDownloadTokens(
        self, request: api.ListDownloadTokensRequest, context: Context
    ) -> api.ListDownloadTokensResponse:
        page = await self.store.list_tokens(
            require_user(),
            request.dataset_id,
            page_size(request.page_size),
            request.page_token,
        )
        now = self.clock()
        return api.ListDownloadTokensResponse(
            download_tokens=[convert.download_token(t, now) for t in page.items],
            next_page_token=page.next_page_token,
        )

    async def RevokeDownloadToken(
        self, request: api.RevokeDownloadTokenRequest, context: Context
    ) -> api.RevokeDownloadTokenResponse:
        await self.store.revoke_token(
            require_user(), request.dataset_id, request.token_id, self.clock()
        )
        log.info("download token revoked", extra={"token_id": request.token_id})
        return api.RevokeDownloadTokenResponse()

    async def ListDownloadEvents(
        self, request: api.ListDownloadEventsRequest, context: Context
    ) -> api.ListDownloadEventsResponse:
        page = await self.store.list_events(
            require_user(),
            request.dataset_id,
            page_size(request.page_size),
            request.page_token,
        )
        return api.ListDownloadEventsResponse(
            download_events=[convert.download_event(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def RedeemDownloadToken(
        self, request: api.RedeemDownloadTokenRequest, context: Context
    ) -> api.RedeemDownloadTokenResponse:
        method = request.http_method.upper() or "GET"
        if method not in ("GET", "HEAD"):
            raise invalid_argument("http_method", "http_method is GET or HEAD")
        grant = await self.store.redeem(
            DownloadRequest(
                secret=request.token,
                method=method,
                range=request.range,
                if_range=request.if_range,
                client_ip=request.client_ip,
                user_agent=request.user_agent,
                request_id=request_context.request_id.get(),
            ),
            self.clock(),
            self._blob_ok,
        )
        d = grant.dataset
        source = ""
        if grant.grant_id:  # a GET: the gateway fetches the bytes from here
            source = await self.presign(d.blob_key, self.settings.source_url_seconds)
        return api.RedeemDownloadTokenResponse(
            dataset_id=d.id,
            name=d.name,
            size_bytes=d.size_bytes,
            sha256=d.sha256,
            created_at=convert.timestamp(d.created_at),
            offset=grant.span.offset,
            length=grant.span.length,
            partial=grant.span.partial,
            source_url=source,
            remaining_uses=grant.remaining_uses,
            expires_at=convert.timestamp(grant.expires_at),
            etag=ranges.etag(d.sha256),
            last_modified=ranges.http_date(d.created_at),
            grant_id=grant.grant_id,
        )

    async def FinishDownload(
        self, request: api.FinishDownloadRequest, context: Context
    ) -> api.FinishDownloadResponse:
        if request.bytes_sent < 0:
            raise invalid_argument("bytes_sent", "bytes_sent must not be negative")
        await self.store.finish(request.grant_id, request.bytes_sent)
        return api.FinishDownloadResponse()

    async def _blob_ok(self, dataset: Dataset) -> bool:
        """The stored file is there, is ours and has the recorded size. Storage that cannot be
        reached is a refusal of its own: retrying later works."""
        try:
            blob = await self.blobs.stat(dataset.blob_key)
        except StorageUnavailable as exc:
            log.warning("storage unavailable", extra={"dataset_id": dataset.id, "error": str(exc)})
            raise storage_down() from None
        except BlobError as exc:
            log.error("stored blob unusable", extra={"dataset_id": dataset.id, "error": str(exc)})
            return False
        if blob.size != dataset.size_bytes:
            log.error(
                "stored blob has the wrong size",
                extra={"dataset_id": dataset.id, "size": blob.size, "recorded": dataset.size_bytes},
            )
            return False
        return True
