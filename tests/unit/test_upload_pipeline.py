"""The upload pipeline under cancellation: whatever moment it is stopped at, nothing is left.

The file work runs in threads inside LocalBlobWriter (base.in_thread); a cancelled upload must
wait for them before it discards what they wrote."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.blobstore.local import LocalBlobStore
from services.common.errors import ServiceError
from services.datasets import upload
from services.datasets.formats import FormatDetector

ROW = b'{"text": "hello"}\n'


def leftovers(store: LocalBlobStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


async def rows(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield ROW * 1000


@pytest.fixture
async def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.start()
    return blobs


async def test_receive_stores_hashes_and_counts(store: LocalBlobStore) -> None:
    received = await upload.receive(rows(5), store, max_bytes=1 << 30, max_line_bytes=1024)
    assert received.size_bytes == len(ROW) * 5000
    assert received.analysis.rows == 5000
    [blob] = leftovers(store)
    assert blob.name == received.blob_key


@pytest.mark.parametrize("stage", ["open", "write", "fsync"])
async def test_cancelled_while_a_thread_works_leaves_nothing(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = getattr(os, stage)

    def slow(*args: object, **kwargs: object) -> object:
        # "open": the writer creating its file in incoming/ (not the directories on the way).
        if stage != "open" or (isinstance(args[1], int) and args[1] & os.O_CREAT):
            entered.set()
            release.wait(5)
        return real(*args, **kwargs)

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


async def test_a_failing_detector_waits_for_the_writer_thread(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = threading.Event()
    finished: list[float] = []
    real_write = os.write

    def slow_write(fd: int, data: object) -> int:
        writing.set()
        threading.Event().wait(0.3)
        finished.append(1.0)
        return real_write(fd, data)  # type: ignore[arg-type]

    def broken_feed(self: object, chunk: bytes) -> None:
        writing.wait(5)
        raise RuntimeError("detector bug")

    monkeypatch.setattr(os, "write", slow_write)
    monkeypatch.setattr(FormatDetector, "feed", broken_feed)
    with pytest.raises(RuntimeError, match="detector bug"):
        await upload.receive(rows(2), store, max_bytes=1 << 30, max_line_bytes=1024)
    assert finished  # the write completed before the writer was torn down
    assert leftovers(store) == []
