"""Receive an uploaded dataset: store, hash and analyse it in one streaming pass (the format
detector runs beside the writer, chunk by chunk; see services.common.receive)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.common.blobstore import BlobStore
from services.common.receive import receive as store_stream
from services.datasets.formats import Analysis, FormatDetector


@dataclass(frozen=True)
class Received:
    blob_key: str
    size_bytes: int
    sha256: str
    analysis: Analysis


async def receive(
    chunks: AsyncIterator[bytes], blobs: BlobStore, *, max_bytes: int, max_line_bytes: int
) -> Received:
    detector = FormatDetector(max_line_bytes)
    stored = await store_stream(chunks, blobs, max_bytes=max_bytes, inspect=detector.feed)
    try:
        analysis = detector.finish()
    except BaseException:
        await blobs.delete(stored.blob_key)
        raise
    return Received(stored.blob_key, stored.size_bytes, stored.sha256, analysis)
