"""The blob store never leaves its root: keys only, no symlinks, no hard links, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.blobstore import BlobError, LocalBlobStore, read_range


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.ensure_layout()
    return blobs


def put(store: LocalBlobStore, data: bytes) -> str:
    writer = store.writer()
    writer.write(data)
    return writer.commit()


def blob_path(store: LocalBlobStore, key: str) -> Path:
    return store.root / "objects" / key[:2] / key


def test_round_trip_and_layout(store: LocalBlobStore) -> None:
    key = put(store, b"hello")
    blob = store.open(key)
    try:
        assert blob.size == 5
        assert os.pread(blob.fd, 5, 0) == b"hello"
    finally:
        blob.close()
    assert oct(blob_path(store, key).stat().st_mode & 0o777) == "0o600"
    assert list((store.root / "incoming").iterdir()) == []


async def test_read_range_streams_the_requested_bytes(store: LocalBlobStore) -> None:
    key = put(store, bytes(range(256)) * 100)
    blob = store.open(key)
    try:
        chunks = [c async for c in read_range(blob, 10, 1000, chunk_size=64)]
    finally:
        blob.close()
    assert b"".join(chunks) == (bytes(range(256)) * 100)[10:1010]
    assert max(len(c) for c in chunks) == 64


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/etc/passwd", "ab/../../x", "A" * 32, "0" * 31, "0" * 32 + "\x00"]
)
def test_only_keys_it_made_are_accepted(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(BlobError, match="not a blob key"):
        store.open(key)
    with pytest.raises(BlobError, match="not a blob key"):
        store.delete(key)


def test_symlink_planted_in_place_of_a_blob_is_refused(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    key = put(store, b"real")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    path = blob_path(store, key)
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(BlobError, match="symlink"):
        store.open(key)


def test_symlinked_fanout_directory_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    key = put(store, b"real")
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


def test_hard_link_to_another_file_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    key = put(store, b"real")
    outside = tmp_path / "outside.txt"
    outside.write_text("not a dataset")
    path = blob_path(store, key)
    path.unlink()
    os.link(outside, path)
    with pytest.raises(BlobError, match="one link"):
        store.open(key)


def test_symlinked_incoming_directory_cannot_redirect_writes(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (store.root / "incoming").rmdir()
    (store.root / "incoming").symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic links|Not a directory"):
        store.writer()
    assert list(target.iterdir()) == []


def test_abort_leaves_nothing(store: LocalBlobStore) -> None:
    writer = store.writer()
    writer.write(b"partial")
    writer.abort()
    assert list((store.root / "incoming").iterdir()) == []
    assert list((store.root / "objects").iterdir()) == []


def test_missing_blob_and_idempotent_delete(store: LocalBlobStore) -> None:
    key = put(store, b"x")
    store.delete(key)
    store.delete(key)
    with pytest.raises(BlobError, match="missing"):
        store.open(key)


def test_sweep_removes_only_stale_partial_uploads(store: LocalBlobStore) -> None:
    stale = store.root / "incoming" / "stale"
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (1_000_000, 1_000_000))
    live = store.writer()  # an upload in progress right now
    live.write(b"streaming")
    assert store.sweep_incoming(older_than_seconds=3600) == 1
    assert not stale.exists()
    key = live.commit()
    assert store.open(key).size == 9


def test_a_planted_fifo_does_not_hang_the_reader(store: LocalBlobStore) -> None:
    key = put(store, b"real")
    path = blob_path(store, key)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(BlobError, match="not a regular file"):
        store.open(key)
