"""Keeping the output store honest: retention, crashed uploads, reconciliation.

One pass (of one replica or several: every step is safe to repeat) deletes the outputs past
their owner's retention, removes what crashed uploads left, and walks the store against the
records (services/common/reconcile.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from services.common.blobstore import BlobStore
from services.common.errors import ServiceError
from services.common.reconcile import reconcile
from services.deploy import outputs
from services.deploy.settings import DeploySettings
from services.deploy.store import DeploymentStore

log = logging.getLogger(__name__)

RETENTION_BATCH = 200


async def upkeep_once(
    store: DeploymentStore, blobs: BlobStore, settings: DeploySettings, now: datetime
) -> None:
    expired = await apply_retention(store, blobs, settings.output_retention_days, now)
    partial = await blobs.sweep_incoming(settings.stale_upload_hours * 3600)
    done = await reconcile(
        "outputs",
        blobs,
        store.outputs_after,
        store.output_keys_in_use,
        now=now,
        grace=timedelta(hours=settings.stale_upload_hours),
    )
    log.info(
        "output storage kept",
        extra={
            "expired": expired,
            "partial_uploads": partial,
            "blobs": done.blobs,
            "bytes": done.bytes,
            "unowned_removed": done.removed,
            "missing": len(done.missing),
        },
    )


async def apply_retention(
    store: DeploymentStore, blobs: BlobStore, default_days: float, now: datetime
) -> int:
    """Delete the outputs past retention; returns how many."""
    deleted = 0
    while batch := await store.expired_outputs(now, default_days, RETENTION_BATCH):
        for d in batch:
            try:
                await outputs.delete(d, store=store, blobs=blobs, now=now)
                deleted += 1
            except ServiceError:  # deleted meanwhile by its owner
                pass
        if len(batch) < RETENTION_BATCH:
            break
    return deleted


async def upkeep_forever(
    store: DeploymentStore,
    blobs: BlobStore,
    settings: DeploySettings,
    clock: Callable[[], datetime],
) -> None:
    while True:
        try:
            await upkeep_once(store, blobs, settings, clock())
        except Exception:  # the loop must outlive any one failure (storage down included)
            log.exception("output upkeep failed; will retry")
        await asyncio.sleep(settings.output_upkeep_interval_seconds)
