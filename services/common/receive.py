"""Receive a streamed file into the blob store: written, hashed (and, for a caller that wants
to, inspected) in one pass.

Per chunk, the work runs in worker threads (writing and hashing release the GIL; an inspector
runs beside them) while the event loop already receives the next chunk. At most two chunks are
in memory, whatever the file's size.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from services.common.blobstore import BlobWriter, LocalBlobStore, settle
from services.common.errors import payload_too_large

Inspect = Callable[[bytes], None]


@dataclass(frozen=True)
class Stored:
    blob_key: str
    size_bytes: int
    sha256: str


async def receive(
    chunks: AsyncIterator[bytes],
    blobs: LocalBlobStore,
    *,
    max_bytes: int,
    inspect: Inspect | None = None,
) -> Stored:
    """Store the chunks as one blob. Past `max_bytes` it stops (payload_too_large); whatever
    goes wrong, a failed or cancelled upload leaves nothing behind."""
    writer = await _open(blobs)
    hasher = hashlib.sha256()
    size = 0
    # The work running in threads now. A cancelled await cannot stop a thread, so it is always
    # awaited through a shield, and on failure settled before the writer's files are touched.
    busy: asyncio.Future[Any] | None = None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise payload_too_large(max_bytes)
            if busy is not None:
                _raise_any(await asyncio.shield(busy))
            work = [asyncio.to_thread(_store, writer, hasher, chunk)]
            if inspect is not None:
                work.append(asyncio.to_thread(inspect, chunk))
            busy = asyncio.gather(*work, return_exceptions=True)  # all finish before anyone looks
        if busy is not None:
            _raise_any(await asyncio.shield(busy))
        busy = asyncio.ensure_future(asyncio.to_thread(writer.commit))
        key: str = await asyncio.shield(busy)
    except BaseException:
        if busy is not None:
            await settle(busy)
        writer.abort()
        raise
    return Stored(key, size, hasher.hexdigest())


async def _open(blobs: LocalBlobStore) -> BlobWriter:
    opening = asyncio.ensure_future(asyncio.to_thread(blobs.writer))
    try:
        return await asyncio.shield(opening)
    except BaseException:
        await settle(opening)
        if not opening.cancelled() and opening.exception() is None:
            opening.result().abort()
        raise


def _raise_any(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _store(writer: BlobWriter, hasher: Any, chunk: bytes) -> None:
    writer.write(chunk)
    hasher.update(chunk)
