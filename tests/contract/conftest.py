"""An in-process datasets service on a real gRPC port, over a fresh database on each backend
and with its bytes on each blob backend (`storage`: a local directory, or S3 on the session's
SeaweedFS under a prefix of the test's own)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from services.common.blobstore import BlobInfo, BlobStore
from services.common.blobstore.local import LocalBlobStore
from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.server import start
from services.datasets.service import server_spec
from services.datasets.settings import DatasetsSettings
from tests.conftest import INTERNAL_TOKEN, STORAGES, PgDatabases, new_user
from tests.s3_fixtures import S3_TEST_BUCKET, multipart_uploads, use_credentials
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

if TYPE_CHECKING:
    from tunelab_cli.seaweed import SeaweedFS


def local_only(reason: str) -> pytest.MarkDecorator:
    """For a test about the local directory itself: its s3 case is skipped, saying why."""
    return pytest.mark.parametrize(
        "storage",
        [
            s if s == "local" else pytest.param(s, marks=pytest.mark.skip(reason=reason))
            for s in STORAGES
        ],
    )


@dataclass
class Storage:
    """The test's blob backend: what a service's settings need to use it, and what only a test
    looks at (the uploads a store has not finished)."""

    kind: str
    server: SeaweedFS | None = None
    root: str = field(default_factory=lambda: f"t/{uuid.uuid4().hex}/")

    def settings(self, service: str) -> dict[str, Any]:
        """StorageSettings fields for `service`'s store: S3 under a prefix of its own (two
        stores under one prefix would take each other's blobs for orphans)."""
        if self.server is None:
            return {}
        return {
            "storage": "s3",
            "s3_bucket": S3_TEST_BUCKET,
            "s3_prefix": f"{self.root}{service}/",
            "s3_endpoint_url": self.server.endpoint_url,
            "s3_addressing_style": "path",
        }

    async def unfinished_uploads(self, store: BlobStore) -> list[str]:
        """What uploads left unfinished in `store`: partial files in a local store's incoming/,
        multipart uploads under an S3 store's prefix."""
        if isinstance(store, LocalBlobStore):
            return sorted(os.listdir(store.root / "incoming"))
        from services.common.blobstore.s3 import S3BlobStore  # aiobotocore: for s3 only

        assert self.server is not None
        assert isinstance(store, S3BlobStore)
        return await asyncio.to_thread(multipart_uploads, self.server, store.config.prefix)


@pytest.fixture
def blob_storage(
    storage: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    if storage == "local":
        return Storage("local")
    server: SeaweedFS = request.getfixturevalue("s3_server")
    use_credentials(monkeypatch, server)
    return Storage("s3", server)


async def stored(store: BlobStore) -> list[BlobInfo]:
    """Every finished blob in the store, listed through it."""
    return [blob async for page in store.list_blobs() for blob in page]


async def stored_bytes(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 28, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Datasets:
    stub: api_grpc.DatasetsServiceAsyncStub
    address: str
    clock: Clock
    db: Database
    settings: DatasetsSettings
    storage: Storage
    user: str = field(default_factory=new_user)
    #: A store of its own over the service's blobs (the same settings), for the tests to look
    #: through; opened on first use (an S3 client takes a tenth of a second to make).
    _blobs: BlobStore | None = None

    async def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = self.settings.blob_store(self.settings.storage_dir)
            await self._blobs.start()
        return self._blobs

    async def close(self) -> None:
        if self._blobs is not None:
            await self._blobs.close()

    def as_(self, user: str | None = None) -> tuple[tuple[str, bytes], ...]:
        """Metadata naming the caller (the test's own user unless another is given)."""
        return ((USER_KEY, (user or self.user).encode()),)

    async def upload(
        self, data: bytes, name: str = "train.jsonl", user: str | None = None, chunk: int = 65536
    ) -> api.UploadDatasetResponse:
        async def messages() -> AsyncIterator[api.UploadDatasetRequest]:
            yield api.UploadDatasetRequest(name=name)
            for start_at in range(0, len(data), chunk):
                yield api.UploadDatasetRequest(chunk=data[start_at : start_at + chunk])

        return await self.stub.UploadDataset(messages(), metadata=self.as_(user), timeout=60)

    async def mint(self, dataset_id: str, **kwargs: int) -> api.CreateDownloadTokenResponse:
        return await self.stub.CreateDownloadToken(
            api.CreateDownloadTokenRequest(dataset_id=dataset_id, **kwargs), metadata=self.as_()
        )

    async def redeem(self, token: str, **kwargs: str) -> api.RedeemDownloadTokenResponse:
        return await self.stub.RedeemDownloadToken(
            api.RedeemDownloadTokenRequest(token=token, **kwargs)
        )

    async def stored(self) -> list[BlobInfo]:
        """The finished blobs the service holds, on either backend."""
        return await stored(await self.blobs())

    async def stored_bytes(self, key: str) -> bytes:
        return await stored_bytes(await self.blobs(), key)

    async def unfinished_uploads(self) -> list[str]:
        """What uploads left behind: partial files, or unfinished multipart uploads."""
        return await self.storage.unfinished_uploads(await self.blobs())

    def local_blob_files(self) -> list[Path]:
        """The blob files in the local directory (tests about the directory itself)."""
        assert self.settings.storage == "local", "a test of local storage only (local_only)"
        return sorted(p for p in (self.settings.storage_dir / "objects").rglob("*") if p.is_file())


@pytest.fixture
async def datasets(
    datasets_db_url: str, tmp_path: Path, blob_storage: Storage
) -> AsyncIterator[Datasets]:
    settings = DatasetsSettings(
        database_url=datasets_db_url,
        storage_dir=tmp_path / "blobs",
        blob_http_address="127.0.0.1:0",
        internal_token=INTERNAL_TOKEN,
        public_url="https://tunelab.example",
        max_upload_bytes=1 << 20,
        max_line_bytes=4096,
        **blob_storage.settings("datasets"),
    )
    clock = Clock()
    db = Database(settings.database_url)
    running = await start(server_spec(settings, db, clock=clock, address="127.0.0.1:0"))
    address = f"127.0.0.1:{running.port}"
    channel = open_channel(address, INTERNAL_TOKEN)
    helper = Datasets(
        api_grpc.DatasetsServiceStub(channel), address, clock, db, settings, blob_storage
    )
    try:
        yield helper
    finally:
        await helper.close()
        await channel.close()
        await running.stop()
        await db.close()


async def rpc_error(awaitable: object) -> grpc.aio.AioRpcError:
    """The error a call fails with (and a test failure if it succeeds)."""
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded; an error was expected")


@pytest.fixture
def eval_urls(backend: str, tmp_path: Path, pg: PgDatabases) -> tuple[str, str]:
    """Fresh, empty databases for a tracing and an eval service, on the test's backend."""
    if backend == "postgresql":
        return pg.fresh(None), pg.fresh(None)
    return f"sqlite:///{tmp_path / 'tracing.db'}", f"sqlite:///{tmp_path / 'eval.db'}"
