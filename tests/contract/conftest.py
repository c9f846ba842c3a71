"""An in-process datasets service on a real gRPC port, over a fresh database on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.server import start
from services.datasets.service import server_spec
from services.datasets.settings import DatasetsSettings
from tests.conftest import INTERNAL_TOKEN, PgDatabases, new_user
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc


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
    user: str = field(default_factory=new_user)

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

    def blob_files(self) -> list[Path]:
        return sorted(p for p in (self.settings.storage_dir / "objects").rglob("*") if p.is_file())

    def incoming_files(self) -> list[Path]:
        return sorted((self.settings.storage_dir / "incoming").iterdir())


@pytest.fixture
async def datasets(datasets_db_url: str, tmp_path: Path) -> AsyncIterator[Datasets]:
    settings = DatasetsSettings(
        database_url=datasets_db_url,
        storage_dir=tmp_path / "blobs",
        blob_http_address="127.0.0.1:0",
        internal_token=INTERNAL_TOKEN,
        public_url="https://tunelab.example",
        max_upload_bytes=1 << 20,
        max_line_bytes=4096,
    )
    clock = Clock()
    db = Database(settings.database_url)
    running = await start(server_spec(settings, db, clock=clock, address="127.0.0.1:0"))
    address = f"127.0.0.1:{running.port}"
    channel = open_channel(address, INTERNAL_TOKEN)
    try:
        yield Datasets(api_grpc.DatasetsServiceStub(channel), address, clock, db, settings)
    finally:
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
