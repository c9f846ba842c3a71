"""The upload pipeline under cancellation: whatever moment it is stopped at, nothing is left."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.blobstore import LocalBlobStore
from services.common.errors import ServiceError
from services.datasets import upload

ROW = b'{"text": "hello"}\n'


def leftovers(store: LocalBlobStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


async def rows(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield ROW * 1000


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.ensure_layout()
    return blobs


async def test_receive_stores_hashes_and_counts(store: LocalBlobStore) -> None:
    received = await upload.receive(rows(5), store, max_bytes=1 << 30, max_line_bytes=1024)
    assert received.size_bytes == len(ROW) * 5000
    assert received.analysis.rows == 5000
    [blob] = leftovers(store)
    assert blob.name == received.blob_key


@pytest.mark.parametrize("stage", ["write", "fsync"])
async def test_cancelled_while_a_thread_works_leaves_nothing(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = getattr(os, stage)

    def slow(*args: object) -> object:
        entered.set()
        release.wait(5)
        return real(*args)

    monkeypatch.setattr(os, stage, slow)
    task = asyncio.create_task(
        upload.receive(rows(3), store, max_bytes=1 << 30, max_line_bytes=1024)
    )
    await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # it waits for the thread, which owns the descriptors
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(store) == []


async def test_too_large_is_refused_and_discarded(store: LocalBlobStore) -> None:
    with pytest.raises(ServiceError) as caught:
        await upload.receive(rows(10), store, max_bytes=len(ROW) * 2500, max_line_bytes=1024)
    assert caught.value.metadata == {"limit_bytes": str(len(ROW) * 2500)}
    assert leftovers(store) == []
