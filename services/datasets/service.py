"""Assemble the datasets service from its settings: database, blob store, servicer, jobs."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path

from services.common.blobserver import BlobServer
from services.common.blobstore import BlobStore
from services.common.blobstore.local import LocalBlobStore
from services.common.db import Database
from services.common.migrations import Migrations
from services.common.reconcile import Reconciled, reconcile
from services.common.server import ServerSpec
from services.datasets.server import Clock, DatasetsServicer, Presign, utc_now
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
    internal_token = settings.require_internal_token()
    blobs = settings.blob_store(settings.storage_dir)
    startup, shutdown = [blobs.start], [blobs.close]
    presign: Presign
    if isinstance(blobs, LocalBlobStore):
        # No other process may open the directory: the gateway fetches the bytes from us.
        blob_server = BlobServer(
            blobs, internal_token, settings.blob_http_address, settings.blob_http_url
        )
        startup.append(blob_server.start)
        shutdown.append(blob_server.stop)
        presign = blob_server.url_for
    else:
        presign = _presigned(blobs)
    store = DatasetStore(db)
    servicer = DatasetsServicer(store, blobs, presign, settings, clock)

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
                uploads = await blobs.sweep_incoming(settings.stale_upload_hours * 3600)
                if tokens or events or uploads:
                    log.info(
                        "housekeeping",
                        extra={"tokens": tokens, "events": events, "partial_uploads": uploads},
                    )
            except Exception:  # the loop must outlive any one failure
                log.exception("housekeeping failed; will retry")
            await asyncio.sleep(settings.purge_interval_seconds)

    async def reconciliation() -> None:
        grace = timedelta(hours=settings.stale_upload_hours)
        while True:
            try:
                await reconcile_datasets(store, blobs, now=clock(), grace=grace)
            except Exception:  # the loop must outlive any one failure (storage down included)
                log.exception("reconciliation failed; will retry")
            await asyncio.sleep(settings.reconcile_interval_seconds)

    return ServerSpec(
        name="datasets",
        domain=DOMAIN,
        address=address or settings.grpc_address,
        internal_token=internal_token,
        register=lambda server: datasets_service_pb2_grpc.add_DatasetsServiceServicer_to_server(
            servicer, server
        ),
        service_names=[SERVICE_NAME],
        background=[housekeeping, reconciliation],
        startup=startup,
        shutdown=shutdown,
    )


def _presigned(blobs: BlobStore) -> Presign:
    async def presign(key: str, seconds: int) -> str:
        url = await blobs.presign_get(key, seconds)
        if url is None:
            raise RuntimeError(f"{blobs.backend} storage cannot presign")
        return url

    return presign


async def reconcile_datasets(
    store: DatasetStore, blobs: BlobStore, *, now: datetime, grace: timedelta
) -> Reconciled:
    """One reconciliation pass of the dataset store against the datasets' records."""
    done = await reconcile(
        "datasets", blobs, store.owned_after, store.blob_keys_in_use, now=now, grace=grace
    )
    log.info(
        "storage reconciled",
        extra={
            "blobs": done.blobs,
            "bytes": done.bytes,
            "unowned_removed": done.removed,
            "missing": len(done.missing),
        },
    )
    return done
