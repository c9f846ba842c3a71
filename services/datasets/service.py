"""Assemble the datasets service from its settings: database, blob store, servicer, jobs."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from services.common.blobstore import LocalBlobStore
from services.common.db import Database
from services.common.migrations import Migrations
from services.common.server import ServerSpec
from services.datasets.server import Clock, DatasetsServicer, utc_now
from services.datasets.settings import DatasetsSettings
from services.datasets.store import DatasetStore
from tunelab.datasets.v1 import datasets_service_pb2, datasets_service_pb2_grpc

log = logging.getLogger(__name__)

MIGRATIONS = Migrations("datasets", Path(__file__).parent / "migrations")
DOMAIN = "datasets.tunelab.dev"
SERVICE_NAME = datasets_service_pb2.DESCRIPTOR.services_by_name["DatasetsService"].full_name


def server_spec(
    settings: DatasetsSettings, db: Database, *, clock: Clock = utc_now, address: str | None = None
) -> ServerSpec:
    blobs = LocalBlobStore(settings.storage_dir)
    blobs.ensure_layout()
    store = DatasetStore(db)
    servicer = DatasetsServicer(store, blobs, settings, clock)

    async def housekeeping() -> None:
        """Expired tokens, old audit records, what a crash left of uploads: all go, in turn."""
        while True:
            try:
                now = clock()
                tokens = await store.purge_expired(
                    now - timedelta(hours=settings.expired_token_grace_hours)
                )
                events = await store.purge_events(
                    now - timedelta(days=settings.audit_retention_days)
                )
                stale = settings.stale_upload_hours * 3600
                uploads = await asyncio.to_thread(blobs.sweep_incoming, stale)
                unowned = await sweep_unowned_blobs(store, blobs, stale)
                if tokens or events or uploads or unowned:
                    log.info(
                        "housekeeping",
                        extra={
                            "tokens": tokens,
                            "events": events,
                            "partial_uploads": uploads,
                            "unowned_blobs": unowned,
                        },
                    )
            except Exception:  # the loop must outlive any one failure
                log.exception("housekeeping failed; will retry")
            await asyncio.sleep(settings.purge_interval_seconds)

    return ServerSpec(
        name="datasets",
        domain=DOMAIN,
        address=address or settings.grpc_address,
        internal_token=settings.require_internal_token(),
        register=lambda server: datasets_service_pb2_grpc.add_DatasetsServiceServicer_to_server(
            servicer, server
        ),
        service_names=[SERVICE_NAME],
        background=[housekeeping],
    )


async def sweep_unowned_blobs(store: DatasetStore, blobs: LocalBlobStore, older_than: float) -> int:
    """Delete finished blobs that no dataset names, older than `older_than` seconds: an upload
    whose blob was committed but whose record was not (the service was killed in between), or
    a dataset whose record was deleted but not its blob. Returns how many."""
    keys = await asyncio.to_thread(blobs.keys_older_than, older_than)
    unowned = set(keys) - await store.blob_keys_in_use(keys) if keys else set()
    for key in unowned:
        log.warning("blob no dataset names removed", extra={"blob_key": key})
        await asyncio.to_thread(blobs.delete, key)
    return len(unowned)
