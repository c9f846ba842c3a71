"""Reconciliation removes finished blobs that no dataset names (a crash between a blob's commit
and its record), on both databases, and only those old enough not to be an upload that is
being recorded right now; a dataset whose blob is missing is reported, not touched."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.common.blobstore.local import LocalBlobStore
from services.common.db import Database
from services.datasets.formats import Analysis, Format
from services.datasets.service import reconcile_datasets
from services.datasets.store import DatasetStore


async def put(blobs: LocalBlobStore, data: bytes, *, age_seconds: float = 0) -> str:
    writer = await blobs.writer()
    await writer.write(data)
    key = await writer.commit()
    if age_seconds:
        then = datetime.now(UTC).timestamp() - age_seconds
        os.utime(blobs.root / "objects" / key[:2] / key, (then, then))
    return key


async def stored(blobs: LocalBlobStore) -> list[str]:
    return [info.key async for batch in blobs.list_blobs() for info in batch]


async def test_only_old_blobs_no_dataset_names_are_swept(
    datasets_db_url: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.start()
    db = Database(datasets_db_url)
    store = DatasetStore(db)
    grace = timedelta(hours=1)
    try:

        async def record(key: str, name: str, size: int, created: datetime) -> str:
            dataset = await store.create_dataset(
                owner="alice",
                name=name,
                analysis=Analysis(Format.TEXT, 1),
                size_bytes=size,
                sha256="0" * 64,
                blob_key=key,
                now=created,
            )
            return dataset.id

        owned = await put(blobs, b"{}\n", age_seconds=7200)
        await record(owned, "kept.jsonl", 3, datetime.now(UTC) - timedelta(hours=2))
        orphan = await put(blobs, b"left by a crash", age_seconds=7200)
        young = await put(blobs, b"being recorded")  # its record is on its way
        (blobs.root / "objects" / "zz").mkdir()  # not a fan-out directory of ours: ignored
        lost = await put(blobs, b"{}\n", age_seconds=7200)
        lost_id = await record(lost, "lost.jsonl", 3, datetime.now(UTC) - timedelta(hours=2))
        await blobs.delete(lost)  # its bytes are gone, the record stays

        assert await stored(blobs) == sorted([owned, orphan, young])
        first = await reconcile_datasets(store, blobs, now=datetime.now(UTC), grace=grace)
        assert (first.blobs, first.removed) == (3, 1)
        assert first.bytes == len(b"{}\n") + len(b"left by a crash") + len(b"being recorded")
        assert first.missing == [f"dataset {lost_id}"]
        second = await reconcile_datasets(store, blobs, now=datetime.now(UTC), grace=grace)
        assert (second.blobs, second.removed, len(second.missing)) == (2, 0, 1)
        assert await stored(blobs) == sorted([owned, young])
    finally:
        await db.close()
