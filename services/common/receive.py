"""Receive a streamed file into a blob store: written, hashed (and, for a caller that wants
to, inspected) in one pass.

Per chunk, the write, the hash and the inspection run side by side (hashing and inspecting in
worker threads; the write in a thread or on the network, whichever the store does) while the
event loop already receives the next chunk. At most two chunks are held here, whatever the
file's size (an S3 store buffers up to its part size on top).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.common.blobstore import BlobStore, BlobWriter, settle
from services.common.errors import payload_too_large

log = logging.getLogger(__name__)

Inspect = Callable[[bytes], None]


@dataclass(frozen=True)
class Stored:
    blob_key: str
    size_bytes: int
    sha256: str


async def receive(
    chunks: AsyncIterator[bytes],
    blobs: BlobStore,
    *,
    max_bytes: int,
    inspect: Inspect | None = None,
) -> Stored:
    """Store the chunks as one blob. Past `max_bytes` it stops (payload_too_large); whatever
    goes wrong, a failed or cancelled upload leaves nothing behind. StorageUnavailable from the
    store propagates for the caller to map."""
    writer = await blobs.writer()
    hasher = hashlib.sha256()
    size = 0
    # The chunk being written, hashed and inspected while the next one arrives. A cancelled
    # await cannot stop a thread, so it is awaited through a shield, and on failure settled
    # before the writer is aborted.
    busy: asyncio.Future[Any] | None = None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise payload_too_large(max_bytes)
            if busy is not None:
                _raise_any(await asyncio.shield(busy))
            work: list[Awaitable[Any]] = [
                writer.write(chunk),
                asyncio.to_thread(hasher.update, chunk),
            ]
            if inspect is not None:
                work.append(asyncio.to_thread(inspect, chunk))
            busy = asyncio.gather(*work, return_exceptions=True)  # all finish before anyone looks
        if busy is not None:
            _raise_any(await asyncio.shield(busy))
        busy = asyncio.ensure_future(writer.commit())
        key: str = await asyncio.shield(busy)
    except BaseException:
        if busy is not None:
            await settle(busy)
        await _abort(writer)
        raise
    return Stored(key, size, hasher.hexdigest())


async def _abort(writer: BlobWriter) -> None:
    """Abort even while being cancelled: what the upload wrote must go."""
    aborting = asyncio.ensure_future(writer.abort())
    await settle(aborting)
    if not aborting.cancelled() and (error := aborting.exception()) is not None:
        log.warning("could not discard a failed upload; housekeeping will", exc_info=error)


def _raise_any(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result
