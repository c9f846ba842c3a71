"""Reconciliation: storage and the database must not silently drift apart.

The store's blobs and the database's keys are walked side by side, both in ascending key order
and both streamed a page at a time, so a bucket of millions costs no more memory than a page:
- a blob no row names, written longer ago than the grace period, is removed (an upload whose
  blob was committed but whose record was not, a delete whose record went but whose blob
  stayed; the grace period covers uploads being recorded right now);
- a row whose blob is missing is reported: logged with the row, and counted in a gauge an alert
  can watch. Its bytes are gone; nothing here can bring them back.
Each finding is checked again on its own before it is acted on or reported, since an upload or a
delete may have run between the two walks reaching it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge

from services.common.blobstore import BlobInfo, BlobMissing, BlobStore

log = logging.getLogger(__name__)

REMOVED = Counter(
    "tunelab_storage_unowned_removed_total",
    "Blobs no record named, removed by reconciliation.",
    ["store"],
)
MISSING = Gauge(
    "tunelab_storage_missing_blobs",
    "Records whose blob is missing, as of the last reconciliation (alert on > 0).",
    ["store"],
)
BLOBS = Gauge("tunelab_storage_blobs", "Blobs in the store at the last reconciliation.", ["store"])
BYTES = Gauge("tunelab_storage_bytes", "Bytes in the store at the last reconciliation.", ["store"])


@dataclass(frozen=True)
class Owned:
    """A row naming a blob: its key, what to call the row in a report, when it was made."""

    key: str
    row: str
    created_at: datetime


# The rows whose key sorts after `after`, in key order, at most `limit` of them.
OwnedAfter = Callable[[str, int], Awaitable[list[Owned]]]
# Those of the keys some row names now.
InUse = Callable[[list[str]], Awaitable[set[str]]]


@dataclass(frozen=True)
class Reconciled:
    blobs: int  # what the store holds after the pass
    bytes: int
    removed: int
    missing: list[str]  # the rows whose blob is missing


async def reconcile(
    name: str,
    blobs: BlobStore,
    owned_after: OwnedAfter,
    in_use: InUse,
    *,
    now: datetime,
    grace: timedelta,
    page: int = 1000,
) -> Reconciled:
    """One pass over store `name` (a metrics label: "datasets", "outputs")."""
    cutoff = now - grace
    rows = _rows(owned_after, page)
    listed = _flat(blobs.list_blobs())
    row, blob = await anext(rows, None), await anext(listed, None)
    count = size = removed = 0
    missing: list[str] = []
    while row is not None or blob is not None:
        if blob is not None and (row is None or blob.key < row.key):
            if blob.modified < cutoff and await _remove_unowned(blobs, in_use, blob):
                removed += 1
            else:
                count, size = count + 1, size + blob.size
            blob = await anext(listed, None)
        elif row is not None and (blob is None or row.key < blob.key):
            if row.created_at < now and await _confirm_missing(blobs, in_use, row):
                missing.append(row.row)
            row = await anext(rows, None)
        else:
            assert blob is not None
            count, size = count + 1, size + blob.size
            row, blob = await anext(rows, None), await anext(listed, None)
    REMOVED.labels(name).inc(removed)
    MISSING.labels(name).set(len(missing))
    BLOBS.labels(name).set(count)
    BYTES.labels(name).set(size)
    return Reconciled(count, size, removed, missing)


async def _remove_unowned(blobs: BlobStore, in_use: InUse, blob: BlobInfo) -> bool:
    if await in_use([blob.key]):
        return False  # recorded while the walk went on
    log.warning(
        "blob no record names removed",
        extra={"blob_key": blob.key, "size_bytes": blob.size, "written": blob.modified.isoformat()},
    )
    await blobs.delete(blob.key)
    return True


async def _confirm_missing(blobs: BlobStore, in_use: InUse, row: Owned) -> bool:
    if not await in_use([row.key]):
        return False  # the row was deleted meanwhile
    try:
        await blobs.stat(row.key)
    except BlobMissing:
        log.error(
            "stored bytes are missing: the record names a blob the store does not have",
            extra={"row": row.row, "blob_key": row.key},
        )
        return True
    return False  # written meanwhile (listing is not a snapshot)


async def _rows(owned_after: OwnedAfter, page: int) -> AsyncIterator[Owned]:
    after = ""
    while True:
        batch = await owned_after(after, page)
        for owned in batch:
            yield owned
        if len(batch) < page:
            return
        after = batch[-1].key


async def _flat(batches: AsyncIterator[list[BlobInfo]]) -> AsyncIterator[BlobInfo]:
    async for batch in batches:
        for blob in batch:
            yield blob
