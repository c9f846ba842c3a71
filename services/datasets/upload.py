"""Receive an uploaded file: store, hash and analyse it in one streaming pass.

Per chunk, two worker threads run side by side: one writes and hashes (both release the GIL),
the other runs the format detector; meanwhile the event loop already receives the next chunk.
At most two chunks and one unfinished line are in memory, whatever the file's size.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from services.common.blobstore import BlobWriter, LocalBlobStore, settle
from services.common.errors import payload_too_large
from services.datasets.formats import Analysis, FormatDetector


@dataclass(frozen=True)
class Received:
    blob_key: str
    size_bytes: int
    sha256: str
    analysis: Analysis


async def receive(
    chunks: AsyncIterator[bytes], blobs: LocalBlobStore, *, max_bytes: int, max_line_bytes: int
) -> Received:
    writer = await _open(blobs)
    hasher = hashlib.sha256()
    detector = FormatDetector(max_line_bytes)
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
            busy = asyncio.gather(
                asyncio.to_thread(_store, writer, hasher, chunk),
                asyncio.to_thread(detector.feed, chunk),
                return_exceptions=True,  # both threads finish before anyone looks
            )
        if busy is not None:
            _raise_any(await asyncio.shield(busy))
        analysis = detector.finish()
        busy = asyncio.ensure_future(asyncio.to_thread(writer.commit))
        key: str = await asyncio.shield(busy)
    except BaseException:
        if busy is not None:
            await settle(busy)
        writer.abort()  # a failed or cancelled upload leaves nothing behind, committed or not
        raise
    return Received(key, size, hasher.hexdigest(), analysis)


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
