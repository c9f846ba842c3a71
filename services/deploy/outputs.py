"""A run's output: received from its pod (job token), kept in the output store, sent to its owner.

A run has at most one output; a second upload replaces the first, and an upload refused or
left unrecorded leaves no blob behind."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime

import grpc

from services.common.blobstore import BlobError, BlobStore, StorageUnavailable
from services.common.errors import (
    ServiceError,
    invalid_argument,
    storage_down,
    storage_unavailable,
)
from services.common.receive import receive
from services.deploy import convert
from services.deploy.reports import finished
from services.deploy.store import Change, Deployment, DeploymentStore, Output
from tunelab.common.v1 import errors_pb2
from tunelab.deploy.v1 import deploy_service_pb2 as api

log = logging.getLogger(__name__)

# A stranger's upload is read on only this far before the refusal (see `upload`).
AUTH_DRAIN_BYTES = 64 * 1024**2
# The run whose (deployment id, job token) these are, or UNAUTHENTICATED.
Authenticate = Callable[[str, str], Awaitable[Deployment]]


async def upload(
    messages: AsyncIterator[api.UploadOutputRequest],
    *,
    authenticate: Authenticate,
    store: DeploymentStore,
    blobs: BlobStore,
    max_bytes: int,
    clock: Callable[[], datetime],
) -> Output:
    """Store the file the messages carry (the first names the run) as the run's output."""
    try:
        first = await anext(aiter(messages))
    except StopAsyncIteration:
        raise invalid_argument("deployment_id", "the stream is empty") from None
    budget = AUTH_DRAIN_BYTES
    try:
        d = await authenticate(first.deployment_id, first.job_token)
        if d.state.terminal:
            raise finished(d)
        if first.chunk:
            raise invalid_argument(
                "chunk", "the first message names the run; the file starts in the second"
            )
        budget = max_bytes
        try:
            stored = await receive(_chunks(messages), blobs, max_bytes=budget)
        except StorageUnavailable as exc:  # a ServiceError, so that the rest is drained
            log.warning("output refused: storage unavailable", extra={"error": str(exc)})
            raise storage_down() from None
    except ServiceError:
        # Refused while the pod is still sending: read the rest first (a gRPC client whose
        # send fails reports that, not our status).
        await _drain(messages, budget)
        raise
    now = clock()
    output = Output(stored.blob_key, stored.size_bytes, stored.sha256, now)
    replaced: Output | None = None

    def attach(current: Deployment) -> Change:
        nonlocal replaced
        if current.state.terminal:
            raise finished(current)
        replaced = current.output
        change = Change(output=output)
        change.log("output_received", f"{stored.size_bytes} bytes, sha256 {stored.sha256}")
        return change

    try:
        after, _ = await store.mutate(d.id, now, attach)
    except BaseException:
        await blobs.delete(stored.blob_key)
        raise
    if replaced is not None:
        await _delete_quietly(blobs, replaced.blob_key, d.id)
    log.info("output stored", extra={"deployment": d.id, "size_bytes": stored.size_bytes})
    assert after.output is not None
    return after.output


async def download(d: Deployment, blobs: BlobStore) -> AsyncIterator[api.DownloadOutputResponse]:
    """The run's output: its description, then the file in chunks."""
    if d.output is None:
        raise _no_output(d)
    async with aclosing(blobs.read(d.output.blob_key, 0, d.output.size_bytes)) as chunks:
        try:
            # The first chunk before the description: a missing blob must be an error status,
            # not a stream that starts and breaks off.
            first = await anext(chunks, b"")
        except StorageUnavailable:
            raise
        except BlobError as exc:
            log.error("output blob unreadable", extra={"deployment": d.id, "error": str(exc)})
            raise storage_unavailable() from None
        yield api.DownloadOutputResponse(output=convert.output(d.output))
        if first:
            yield api.DownloadOutputResponse(chunk=first)
        async for chunk in chunks:
            yield api.DownloadOutputResponse(chunk=chunk)


async def delete(
    d: Deployment, *, store: DeploymentStore, blobs: BlobStore, now: datetime
) -> Output:
    """Forget the run's output, then remove its bytes; returns what was deleted."""
    removed: Output | None = None

    def detach(current: Deployment) -> Change:
        nonlocal removed
        if current.output is None:
            raise _no_output(current)
        removed = current.output
        change = Change(output=None)
        change.log("output_deleted", f"{removed.size_bytes} bytes, sha256 {removed.sha256}")
        return change

    await store.mutate(d.id, now, detach)
    assert removed is not None
    await _delete_quietly(blobs, removed.blob_key, d.id)
    log.info("output deleted", extra={"deployment": d.id, "size_bytes": removed.size_bytes})
    return removed


def _no_output(d: Deployment) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"deployment {d.id} has no output: its pod sends it when training succeeds, and a "
        "deleted one is gone",
        errors_pb2.ERROR_REASON_NOT_FOUND,
        {"kind": "output"},
    )


async def _delete_quietly(blobs: BlobStore, key: str, deployment: str) -> None:
    """Delete a blob no record names any more; if that fails, reconciliation will."""
    try:
        await blobs.delete(key)
    except BlobError as exc:
        log.warning(
            "replaced output left behind", extra={"deployment": deployment, "error": str(exc)}
        )


async def _chunks(messages: AsyncIterator[api.UploadOutputRequest]) -> AsyncIterator[bytes]:
    async for message in messages:
        if message.chunk:
            yield message.chunk


async def _drain(messages: AsyncIterator[api.UploadOutputRequest], budget: int) -> None:
    async for message in messages:
        budget -= len(message.chunk)
        if budget < 0:
            break
