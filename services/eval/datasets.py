"""The eval service's calls to the datasets service: a curated dataset is stored through its
gRPC contract, as the user the curation is for, like any upload. This is the only arrow from
eval to datasets; the eval service never touches dataset bytes or tables."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from services.common.client import open_channel
from services.common.context import acting_for
from tunelab.datasets.v1 import datasets_pb2
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

_SERVICE = "tunelab.datasets.v1.DatasetsService"


class DatasetsClient:
    def __init__(self, address: str, internal_token: str, upload_timeout: float) -> None:
        self.channel = open_channel(
            address, internal_token, retry={_SERVICE: ["GetDataset", "DeleteDataset"]}
        )
        self.stub = api_grpc.DatasetsServiceStub(self.channel)
        self.upload_timeout = upload_timeout

    async def upload(
        self, owner: str, name: str, chunks: AsyncIterator[bytes]
    ) -> datasets_pb2.Dataset:
        """Store the bytes as the owner's dataset; the datasets service checks them as it
        checks every upload (a failure raises its error, and nothing is stored)."""

        async def requests() -> AsyncIterator[api.UploadDatasetRequest]:
            yield api.UploadDatasetRequest(name=name)
            async for chunk in chunks:
                yield api.UploadDatasetRequest(chunk=chunk)

        with acting_for(owner):
            reply = await self.stub.UploadDataset(requests(), timeout=self.upload_timeout)
        return reply.dataset

    async def delete(self, owner: str, dataset_id: str) -> None:
        """Remove a dataset the curation will not report (best effort: it is the owner's to
        see and delete if this fails)."""
        with acting_for(owner), contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.DeleteDataset(api.DeleteDatasetRequest(dataset_id=dataset_id))

    async def close(self) -> None:
        await self.channel.close()
