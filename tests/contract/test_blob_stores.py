"""The BlobStore contract, on both backends: a local directory, and S3 on a real SeaweedFS.

What a backend keeps apart from finished blobs (partial files, unfinished multipart uploads) is
looked at behind its back, through `leftovers`: a failed, cancelled or aborted upload must
leave none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from services.common.blobstore import (
    BlobError,
    BlobMissing,
    BlobStore,
    BlobWriter,
    StorageUnavailable,
    new_key,
)
from services.common.blobstore.local import LocalBlobStore
from services.common.blobstore.s3 import S3BlobStore, S3BlobWriter, S3Config
from tests.s3_fixtures import config_for, use_credentials

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from tunelab_cli.seaweed import SeaweedFS

MIB = 1024**2


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs: BlobStore
    if request.param == "local":
        blobs = LocalBlobStore(tmp_path / "blobs")
    else:
        # The smallest parts S3 allows, two in flight: a few MiB exercise multipart uploads,
        # their concurrency and their backpressure.
        config: S3Config = request.getfixturevalue("s3_config")
        blobs = S3BlobStore(dataclasses.replace(config, part_bytes=5 * MIB, max_concurrency=2))
    await blobs.start()
    yield blobs
    await blobs.close()


async def put(store: BlobStore, data: bytes, write_bytes: int = MIB) -> str:
    writer = await store.writer()
    try:
        for start in range(0, len(data), write_bytes):
            await writer.write(data[start : start + write_bytes])
        return await writer.commit()
    except BaseException:
        await writer.abort()
        raise


async def read(store: BlobStore, key: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, offset, length)])


async def all_keys(store: BlobStore) -> list[str]:
    return [info.key async for batch in store.list_blobs() for info in batch]


async def leftovers(store: BlobStore) -> list[str]:
    """Everything the backend holds under its root or prefix: objects, and what uploads in
    progress keep (incoming files, unfinished multipart uploads)."""
    if isinstance(store, LocalBlobStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    assert isinstance(store, S3BlobStore)
    s3 = await store._s3()
    prefix = store.config.prefix
    listed = await s3.list_objects_v2(Bucket=store.config.bucket, Prefix=prefix)
    uploads = await s3.list_multipart_uploads(Bucket=store.config.bucket, Prefix=prefix)
    return sorted(
        [o.get("Key", "") for o in listed.get("Contents", [])]
        + [f"upload:{u.get('Key', '')}" for u in uploads.get("Uploads", [])]
    )


# Round trips ---------------------------------------------------------------------------------


async def test_a_small_blob_round_trips(store: BlobStore) -> None:
    writer = await store.writer()
    await writer.write(b"hello ")
    await writer.write(b"world")
    assert writer.size == 11
    key = await writer.commit()

    assert await read(store, key) == b"hello world"
    assert [c async for c in store.read(key, chunk_size=4)] == [b"hell", b"o wo", b"rld"]
    info = await store.stat(key)
    assert (info.key, info.size) == (key, 11)
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=1)
    assert await all_keys(store) == [key]


async def test_an_empty_blob_round_trips(store: BlobStore) -> None:
    key = await put(store, b"")
    assert (await store.stat(key)).size == 0
    assert await read(store, key) == b""


async def test_a_large_blob_round_trips_in_parts(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(12 * MIB + 12345)
    sent: list[int] = []
    if isinstance(store, S3BlobStore):  # count the parts, and check none is too small
        original = S3BlobWriter._upload_part

        async def counted(
            self: S3BlobWriter, upload_id: str, number: int, part: io.BytesIO
        ) -> CompletedPartTypeDef:
            with part.getbuffer() as buffer:
                sent.append(len(buffer))
            return await original(self, upload_id, number, part)

        monkeypatch.setattr(S3BlobWriter, "_upload_part", counted)

    key = await put(store, data, write_bytes=MIB + 7)  # writes that straddle the parts

    if isinstance(store, S3BlobStore):
        assert sent == [5 * MIB, 5 * MIB, 2 * MIB + 12345]
    assert (await store.stat(key)).size == len(data)
    digest = hashlib.sha256()
    async for chunk in store.read(key):
        assert len(chunk) <= MIB
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    # A range across the first part's end.
    assert await read(store, key, 5 * MIB - 10, 30) == data[5 * MIB - 10 : 5 * MIB + 20]


async def test_ranges(store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    key = await put(store, data)

    assert await read(store, key, 10, 1000) == data[10:1010]
    assert await read(store, key, 0, 1) == data[:1]
    assert await read(store, key, 9000) == data[9000:]  # to the end
    assert await read(store, key, len(data) - 1, 1) == data[-1:]
    assert await read(store, key, 500, 0) == b""
    assert await read(store, key, len(data)) == b""  # nothing left, but not past the end
    chunks = [c async for c in store.read(key, 100, 1000, chunk_size=300)]
    assert [len(c) for c in chunks] == [300, 300, 300, 100]


async def test_reading_past_the_end_is_an_error(store: BlobStore) -> None:
    key = await put(store, b"0123456789")
    with pytest.raises(BlobError, match="than asked for"):
        await read(store, key, 8, 5)
    with pytest.raises(BlobError, match="than asked for"):
        await read(store, key, 11, 1)
    with pytest.raises(BlobError, match="than asked for"):
        await read(store, key, 11, 0)


async def test_a_reader_that_stops_early_or_is_cancelled_leaves_the_store_usable(
    store: BlobStore,
) -> None:
    data = os.urandom(3 * MIB)
    key = await put(store, data)

    reader = store.read(key, chunk_size=64 * 1024)
    assert await anext(reader) == data[: 64 * 1024]
    await reader.aclose()

    got = asyncio.Event()

    async def slow_reader() -> None:
        async for _ in store.read(key, chunk_size=64 * 1024):
            got.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(slow_reader())
    await got.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await read(store, key) == data


# Missing blobs and bad keys --------------------------------------------------------------------


async def test_a_missing_blob_is_blob_missing(store: BlobStore) -> None:
    key = new_key()
    with pytest.raises(BlobMissing):
        await store.stat(key)
    with pytest.raises(BlobMissing):
        await read(store, key)
    with pytest.raises(BlobMissing):
        await read(store, key, 5, 10)


@pytest.mark.parametrize("key", ["../../etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "/x"])
async def test_only_keys_the_store_makes_are_accepted(store: BlobStore, key: str) -> None:
    with pytest.raises(BlobError, match="not a blob key"):
        await store.stat(key)
    with pytest.raises(BlobError, match="not a blob key"):
        await read(store, key)
    with pytest.raises(BlobError, match="not a blob key"):
        await store.delete(key)
    if isinstance(store, S3BlobStore):  # a local store presigns nothing, whatever the key
        with pytest.raises(BlobError, match="not a blob key"):
            await store.presign_get(key, 60)


async def test_delete_is_idempotent(store: BlobStore) -> None:
    key = await put(store, b"data")
    await store.delete(key)
    with pytest.raises(BlobMissing):
        await store.stat(key)
    await store.delete(key)
    await store.delete(new_key())
    assert await leftovers(store) == []


# Aborts and failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 11 * MIB], ids=["buffered", "multipart"])
async def test_abort_before_commit_leaves_nothing(store: BlobStore, size: int) -> None:
    writer = await store.writer()
    await writer.write(os.urandom(size))
    if isinstance(store, S3BlobStore) and size > 5 * MIB:
        assert any(name.startswith("upload:") for name in await leftovers(store))
    await writer.abort()
    await writer.abort()  # again: nothing left to do
    assert [name for name in await leftovers(store) if "incoming" in name or ":" in name] == []
    assert await all_keys(store) == []


async def test_abort_after_commit_deletes_the_blob(store: BlobStore) -> None:
    writer = await store.writer()
    await writer.write(b"regretted")
    key = await writer.commit()
    assert await read(store, key) == b"regretted"
    await writer.abort()
    with pytest.raises(BlobMissing):
        await store.stat(key)
    assert await all_keys(store) == []


async def test_a_cancelled_upload_leaves_nothing(store: BlobStore) -> None:
    """Cancelled mid-write, as a client that hangs up is: the caller aborts, as receive.py does
    (the S3 writer also cleans up by itself, see below)."""
    writers: list[BlobWriter] = []

    async def upload_forever() -> None:
        writer = await store.writer()
        writers.append(writer)
        try:
            while True:
                await writer.write(os.urandom(MIB))
        except BaseException:
            await writer.abort()
            raise

    task = asyncio.create_task(upload_forever())
    deadline = time.monotonic() + 30
    while not writers or writers[0].size < 11 * MIB:  # two parts sent, a third on its way
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [name for name in await leftovers(store) if "incoming" in name or ":" in name] == []
    assert await all_keys(store) == []


async def test_a_failed_part_aborts_the_whole_upload_by_itself(
    s3_config: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3BlobStore(dataclasses.replace(s3_config, part_bytes=5 * MIB, max_concurrency=2))
    await store.start()
    original = S3BlobWriter._upload_part

    async def third_fails(
        self: S3BlobWriter, upload_id: str, number: int, part: io.BytesIO
    ) -> CompletedPartTypeDef:
        if number == 3:
            await asyncio.sleep(0.05)  # let parts 1 and 2 be stored, or be on their way
            raise StorageUnavailable("injected")
        return await original(self, upload_id, number, part)

    monkeypatch.setattr(S3BlobWriter, "_upload_part", third_fails)
    try:
        writer = await store.writer()

        async def upload() -> None:
            for _ in range(20):
                await writer.write(os.urandom(MIB))
            await writer.commit()

        with pytest.raises(StorageUnavailable, match="injected"):  # in a write or the commit
            await upload()
        assert await leftovers(store) == []  # no abort() from the caller needed
        await writer.abort()  # but allowed
        with pytest.raises(RuntimeError):
            await writer.write(b"more")
    finally:
        await store.close()


# Listing and sweeping --------------------------------------------------------------------------


async def plant_foreign_names(store: BlobStore) -> None:
    """Names that are not blobs of ours: another application's files in a shared bucket."""
    if isinstance(store, LocalBlobStore):
        key = new_key()
        for name in (f"{key}.tmp", key.upper(), "README"):
            (store.root / "objects" / key[:2]).mkdir(exist_ok=True)
            (store.root / "objects" / key[:2] / name).write_bytes(b"not ours")
        (store.root / "objects" / "zz").mkdir()
        (store.root / "objects" / "zz" / new_key()).write_bytes(b"not in its fan-out")
        return
    assert isinstance(store, S3BlobStore)
    s3 = await store._s3()
    prefix = store.config.prefix
    for name in (
        f"{prefix}{new_key()}.tmp",
        f"{prefix}{new_key().upper()}",
        f"{prefix}sub/{new_key()}",
        f"{prefix}README",
        prefix.rstrip("/") + new_key(),  # beside the prefix, not under it
    ):
        await s3.put_object(Bucket=store.config.bucket, Key=name, Body=b"not ours")


async def test_list_blobs_lists_our_finished_blobs_in_key_order(store: BlobStore) -> None:
    sizes = {await put(store, b"x" * n): n for n in range(1, 6)}
    unfinished = await store.writer()
    await unfinished.write(b"not committed")
    await plant_foreign_names(store)

    batches = [batch async for batch in store.list_blobs()]
    assert all(batches)
    listed = [info for batch in batches for info in batch]
    assert [info.key for info in listed] == sorted(sizes)
    assert {info.key: info.size for info in listed} == sizes
    await unfinished.abort()


async def test_sweep_incoming_removes_only_old_unfinished_uploads(store: BlobStore) -> None:
    """An upload a crash abandoned: a partial file in incoming/, or a multipart upload."""
    if isinstance(store, LocalBlobStore):
        abandoned = store.root / "incoming" / "0123abcd"
        abandoned.write_bytes(b"partial")
        assert await store.sweep_incoming(3600) == 0
        assert await store.sweep_incoming(-60) == 1
        assert not abandoned.exists()
        return
    assert isinstance(store, S3BlobStore)
    s3 = await store._s3()
    bucket, prefix = store.config.bucket, store.config.prefix
    ours = await s3.create_multipart_upload(Bucket=bucket, Key=prefix + new_key())
    foreign = await s3.create_multipart_upload(Bucket=bucket, Key=prefix + "not-ours")
    try:
        assert await store.sweep_incoming(3600) == 0
        assert len(await leftovers(store)) == 2

        assert await store.sweep_incoming(-60) == 1

        assert await leftovers(store) == [f"upload:{prefix}not-ours"]
        assert await store.sweep_incoming(-60) == 0
    finally:
        await s3.abort_multipart_upload(
            Bucket=bucket, Key=foreign["Key"], UploadId=foreign["UploadId"]
        )
    assert ours["Key"].startswith(prefix)


# Presigned URLs --------------------------------------------------------------------------------


async def test_presigned_urls(store: BlobStore) -> None:
    data = os.urandom(1000)
    key = await put(store, data)
    url = await store.presign_get(key, 60)
    if isinstance(store, LocalBlobStore):
        assert url is None  # the owning service serves the bytes itself
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        whole = await http.get(url)
        assert (whole.status_code, whole.content) == (200, data)
        ranged = await http.get(url, headers={"Range": "bytes=100-199"})
        assert (ranged.status_code, ranged.content) == (206, data[100:200])

        signature = httpx.URL(url).params["X-Amz-Signature"]
        forged = "0" if signature[0] != "0" else "1"
        tampered = await http.get(url.replace(signature, forged + signature[1:]))
        assert tampered.status_code == 403
        other_key = await http.get(url.replace(key, new_key()))
        assert other_key.status_code == 403  # the signature covers the name


async def test_presigned_url_expiry_is_bounded(s3_config: S3Config) -> None:
    store = S3BlobStore(s3_config)
    try:
        with pytest.raises(ValueError, match="expires_seconds"):
            await store.presign_get(new_key(), 8 * 24 * 3600)
        url = await store.presign_get(new_key(), 7 * 24 * 3600)  # no request is made
        assert url is not None
        assert "X-Amz-Expires=604800" in url
    finally:
        await store.close()


# S3 configuration and outages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("", ""), ("datasets", "datasets/"), ("/a/b/", "a/b/"), ("//x", "x/")],
)
def test_s3_prefixes_are_normalised(given: str, normalised: str) -> None:
    assert S3Config(bucket="bucket", prefix=given).prefix == normalised


def test_s3_configs_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 3 characters"):
        S3Config(bucket="ab")
    with pytest.raises(ValueError, match="part_bytes"):
        S3Config(bucket="bucket", part_bytes=5 * MIB - 1)
    with pytest.raises(ValueError, match="max_concurrency"):
        S3Config(bucket="bucket", max_concurrency=0)
    with pytest.raises(ValueError, match="timeouts"):
        S3Config(bucket="bucket", read_timeout=0)


async def test_an_outage_is_storage_unavailable_until_the_storage_is_back(
    private_s3_server: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the storage is down every call fails fast with StorageUnavailable (and a start()
    only warns); once it is back the same store works again."""
    server = private_s3_server
    use_credentials(monkeypatch, server)
    config = dataclasses.replace(
        config_for(server), connect_timeout=1, read_timeout=2, max_attempts=2
    )
    store = S3BlobStore(config)
    await store.start()
    try:
        before = await put(store, b"stored before the outage")
        server.stop(grace_seconds=0)  # killed: an outage gives no notice

        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            await store.stat(before)
        with pytest.raises(StorageUnavailable):
            await read(store, before)
        writer = await store.writer()
        await writer.write(b"during the outage")  # buffered: no request yet
        with pytest.raises(StorageUnavailable):
            await writer.commit()
        await writer.abort()  # swallows the outage: it runs on cleanup paths
        with caplog.at_level(logging.WARNING, logger="services.common.blobstore.s3"):
            another = S3BlobStore(config)
            await another.start()  # a service starting meanwhile comes up
            await another.close()
        assert time.monotonic() - started < 15
        assert "not usable yet" in caplog.text
        message = str(raised.value)
        assert "S3 stat" in message
        assert server.secret_key not in message
        assert server.access_key not in message

        server.restart()

        assert await read(store, before) == b"stored before the outage"
        after = await put(store, b"stored after")
        assert await read(store, after) == b"stored after"
    finally:
        await store.close()


async def test_an_upload_holds_one_copy_of_each_part_in_flight(s3_config: S3Config) -> None:
    """What an upload holds is its parts in flight and the one being filled, each once: 2 in
    flight + 1 filling of 8 MiB here. (A bytes part was copied again on its way out, by
    aiohttp unsharing the BytesIO that botocore wraps it in: twice the memory per upload.)"""
    part = 8 * MIB
    store = S3BlobStore(dataclasses.replace(s3_config, part_bytes=part, max_concurrency=2))
    await store.start()
    chunk = os.urandom(4 * MIB)  # as the gateway's messages come
    try:
        writer = await store.writer()
        tracemalloc.start()
        try:
            for _ in range(16):  # 64 MiB: eight parts
                await writer.write(chunk)
            key = await writer.commit()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (await store.stat(key)).size == 64 * MIB
        assert peak < 3 * part + 6 * MIB, f"{peak / MIB:.0f} MiB held for 3 parts of 8 MiB"
    finally:
        await store.close()
