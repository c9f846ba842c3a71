"""Housekeeping removes finished blobs that no dataset names (a crash between a blob's commit
and its record), on both databases, and only those old enough not to be an upload that is
being recorded right now."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from services.common.blobstore import LocalBlobStore
from services.common.db import Database
from services.datasets.formats import Analysis, Format
from services.datasets.service import sweep_unowned_blobs
from services.datasets.store import DatasetStore


def put(blobs: LocalBlobStore, data: bytes, *, age_seconds: float = 0) -> str:
    writer = blobs.writer()
    writer.write(data)
    key = writer.commit()
    if age_seconds:
        then = datetime.now(UTC).timestamp() - age_seconds
        os.utime(blobs.root / "objects" / key[:2] / key, (then, then))
    return key


async def test_only_old_blobs_no_dataset_names_are_swept(
    datasets_db_url: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.ensure_layout()
    db = Database(datasets_db_url)
    store = DatasetStore(db)
    try:
        owned = put(blobs, b"{}\n", age_seconds=7200)
        await store.create_dataset(
            owner="alice",
            name="kept.jsonl",
            analysis=Analysis(Format.TEXT, 1),
            size_bytes=3,
            sha256="0" * 64,
            blob_key=owned,
            now=datetime.now(UTC),
        )
        orphan = put(blobs, b"left by a crash", age_seconds=7200)
        young = put(blobs, b"being recorded")  # its record is on its way
        (blobs.root / "objects" / "zz").mkdir()  # not a fan-out directory of ours: ignored

        assert sorted(blobs.keys_older_than(3600)) == sorted([owned, orphan])
        assert await sweep_unowned_blobs(store, blobs, 3600) == 1
        assert await sweep_unowned_blobs(store, blobs, 3600) == 0
        assert sorted(blobs.keys_older_than(-60)) == sorted([owned, young])
    finally:
        await db.close()
