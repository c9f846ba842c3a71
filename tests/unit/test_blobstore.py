"""The blob store never leaves its root: keys only, no symlinks, no hard links, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.blobstore import BlobError, BlobMissing
from services.common.blobstore.local import LocalBlobStore, read_range


@pytest.fixture
async def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.start()
    return blobs


async def put(store: LocalBlobStore, data: bytes) -> str:
    writer = await store.writer()
    await writer.write(data)
    return await writer.commit()


def blob_path(store: LocalBlobStore, key: str) -> Path:
    return store.root / "objects" / key[:2] / key


async def test_round_trip_and_layout(store: LocalBlobStore) -> None:
    key = await put(store, b"hello")
    blob = store.open(key)
    try:
        assert blob.size == 5
        assert os.pread(blob.fd, 5, 0) == b"hello"
    finally:
        blob.close()
    assert (await store.stat(key)).size == 5
    assert b"".join([c async for c in store.read(key)]) == b"hello"
    assert oct(blob_path(store, key).stat().st_mode & 0o777) == "0o600"
    assert list((store.root / "incoming").iterdir()) == []


async def test_read_range_streams_the_requested_bytes(store: LocalBlobStore) -> None:
    data = bytes(range(256)) * 100
    key = await put(store, data)
    blob = store.open(key)
    try:
        chunks = [c async for c in read_range(blob, 10, 1000, chunk_size=64)]
    finally:
        blob.close()
    assert b"".join(chunks) == data[10:1010]
    assert max(len(c) for c in chunks) == 64
    read = [c async for c in store.read(key, 10, 1000, chunk_size=64)]
    assert read == chunks


async def test_reading_past_the_end_is_an_error(store: LocalBlobStore) -> None:
    key = await put(store, b"short")
    with pytest.raises(BlobError, match="fewer than asked"):
        _ = [c async for c in store.read(key, 2, 10)]


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/etc/passwd", "ab/../../x", "A" * 32, "0" * 31, "0" * 32 + "\x00"]
)
async def test_only_keys_it_made_are_accepted(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(BlobError, match="not a blob key"):
        store.open(key)
    with pytest.raises(BlobError, match="not a blob key"):
        await store.stat(key)
    with pytest.raises(BlobError, match="not a blob key"):
        _ = [c async for c in store.read(key)]
    with pytest.raises(BlobError, match="not a blob key"):
        await store.delete(key)
    with pytest.raises(BlobError, match="not a blob key"):
        store.delete_now(key)


async def test_symlink_planted_in_place_of_a_blob_is_refused(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    key = await put(store, b"real")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    path = blob_path(store, key)
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(BlobError, match="symlink"):
        store.open(key)
    with pytest.raises(BlobError, match="symlink"):
        await store.stat(key)
    with pytest.raises(BlobError, match="symlink"):
        _ = [c async for c in store.read(key)]


async def test_symlinked_fanout_directory_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    key = await put(store, b"real")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / key).write_bytes(b"planted")
    fanout = store.root / "objects" / key[:2]
    for child in fanout.iterdir():
        child.unlink()
    fanout.rmdir()
    fanout.symlink_to(elsewhere)
    with pytest.raises(BlobError):
        store.open(key)
    with pytest.raises(BlobError):
        await store.stat(key)
    # Nor does listing follow it into the other directory.
    assert [b async for b in store.list_blobs()] == []


async def test_hard_link_to_another_file_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    key = await put(store, b"real")
    outside = tmp_path / "outside.txt"
    outside.write_text("not a dataset")
    path = blob_path(store, key)
    path.unlink()
    os.link(outside, path)
    with pytest.raises(BlobError, match="one link"):
        store.open(key)
    with pytest.raises(BlobError, match="one link"):
        await store.stat(key)


async def test_symlinked_incoming_directory_cannot_redirect_writes(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (store.root / "incoming").rmdir()
    (store.root / "incoming").symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic links|Not a directory"):
        await store.writer()
    assert list(target.iterdir()) == []


async def test_abort_leaves_nothing(store: LocalBlobStore) -> None:
    writer = await store.writer()
    await writer.write(b"partial")
    await writer.abort()
    await writer.abort()  # may be repeated
    assert list((store.root / "incoming").iterdir()) == []
    assert list((store.root / "objects").iterdir()) == []


async def test_abort_after_commit_removes_the_blob(store: LocalBlobStore) -> None:
    writer = await store.writer()
    await writer.write(b"committed")
    key = await writer.commit()
    assert writer.size == 9
    await writer.abort()
    with pytest.raises(BlobMissing):
        await store.stat(key)
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


async def test_missing_blob_and_idempotent_delete(store: LocalBlobStore) -> None:
    key = await put(store, b"x")
    await store.delete(key)
    await store.delete(key)
    with pytest.raises(BlobMissing, match="missing"):
        store.open(key)
    with pytest.raises(BlobMissing):
        await store.stat(key)
    with pytest.raises(BlobMissing):
        _ = [c async for c in store.read(key)]


async def test_sweep_removes_only_stale_partial_uploads(store: LocalBlobStore) -> None:
    stale = store.root / "incoming" / "stale"
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (1_000_000, 1_000_000))
    live = await store.writer()  # an upload in progress right now
    await live.write(b"streaming")
    assert await store.sweep_incoming(older_than_seconds=3600) == 1
    assert not stale.exists()
    key = await live.commit()
    assert (await store.stat(key)).size == 9


async def test_list_blobs_gives_size_and_time_written(store: LocalBlobStore) -> None:
    old, new = await put(store, b"old"), await put(store, b"new!")
    os.utime(blob_path(store, old), (1_000_000, 1_000_000))
    listed = [info async for batch in store.list_blobs() for info in batch]
    assert [(b.key, b.size) for b in listed] == sorted([(old, 3), (new, 4)])
    assert {b.key: b.modified.timestamp() for b in listed}[old] == 1_000_000


async def test_a_planted_fifo_does_not_hang_the_reader(store: LocalBlobStore) -> None:
    key = await put(store, b"real")
    path = blob_path(store, key)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(BlobError, match="not a regular file"):
        store.open(key)
    with pytest.raises(BlobError, match="not a regular file"):
        await store.stat(key)
