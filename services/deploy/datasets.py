"""The deploy service's calls to the datasets service, made on a user's behalf."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc

from services.common.client import open_channel
from services.common.context import acting_for
from services.common.errors import RemoteError
from tunelab.datasets.v1 import datasets_pb2
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

_SERVICE = "tunelab.datasets.v1.DatasetsService"


@dataclass(frozen=True)
class DatasetFacts:
    id: str
    name: str
    size_bytes: int
    sha256: str
    row_count: int
    format: datasets_pb2.DatasetFormat.ValueType
    format_error: str


@dataclass(frozen=True)
class DownloadLink:
    url: str
    token_id: str


class DatasetsClient:
    def __init__(self, address: str, internal_token: str) -> None:
        self.channel = open_channel(address, internal_token, retry={_SERVICE: ["GetDataset"]})
        self.stub = api_grpc.DatasetsServiceStub(self.channel)

    async def get(self, owner: str, dataset_id: str) -> DatasetFacts | None:
        """The dataset, or None when it does not exist or is not the owner's."""
        with acting_for(owner):
            try:
                reply = await self.stub.GetDataset(api.GetDatasetRequest(dataset_id=dataset_id))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
        d = reply.dataset
        error = ""
        if d.HasField("format_error"):
            error = f"line {d.format_error.line}: {d.format_error.reason}"
        return DatasetFacts(d.id, d.name, d.size_bytes, d.sha256, d.row_count, d.format, error)

    async def download_link(
        self, owner: str, dataset_id: str, *, ttl_seconds: int, max_uses: int
    ) -> DownloadLink:
        with acting_for(owner):
            reply = await self.stub.CreateDownloadToken(
                api.CreateDownloadTokenRequest(
                    dataset_id=dataset_id, ttl_seconds=ttl_seconds, max_uses=max_uses
                )
            )
        return DownloadLink(reply.url, reply.token_id)

    async def revoke(self, owner: str, dataset_id: str, token_id: str) -> None:
        """Revoke a link no pod will use (best effort: it expires on its own anyway)."""
        with acting_for(owner), contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.RevokeDownloadToken(
                api.RevokeDownloadTokenRequest(dataset_id=dataset_id, token_id=token_id)
            )

    async def close(self) -> None:
        await self.channel.close()


def describe(error: grpc.aio.AioRpcError) -> str:
    remote = RemoteError.from_rpc_error(error)
    return f"{remote.code.name}: {remote.message}"
