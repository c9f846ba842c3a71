"""Reconciliation (services/common/reconcile.py) of real blob stores with real records: the
datasets' store on both blob backends (a local directory, S3 on a real SeaweedFS) and both
databases, and the deploy service's output store through its upkeep pass.

Blobs cannot be aged on S3 (the server stamps them), so "old" and "young" are told apart by the
pass's `now`: the young blobs are written last, and `now` is put one grace period after them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from services.common.blobstore import BlobInfo, BlobMissing, BlobStore, new_key
from services.common.blobstore.local import LocalBlobStore
from services.common.blobstore.s3 import S3BlobStore, S3Config
from services.common.db import Database
from services.common.reconcile import Owned, Reconciled, reconcile
from services.datasets.formats import Analysis, Format
from services.datasets.service import reconcile_datasets
from services.datasets.store import DatasetStore
from services.deploy.output_upkeep import upkeep_once
from services.deploy.service import MIGRATIONS as DEPLOY_MIGRATIONS
from services.deploy.settings import DeploySettings
from services.deploy.spec import parse
from services.deploy.states import State
from services.deploy.store import Change, DeploymentStore, Output
from tests.conftest import PgDatabases
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb

GRACE = timedelta(hours=1)


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        config: S3Config = request.getfixturevalue("s3_config")
        store = S3BlobStore(config)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def datasets(datasets_db_url: str) -> AsyncIterator[DatasetStore]:
    db = Database(datasets_db_url)
    yield DatasetStore(db)
    await db.close()


@pytest.fixture
def deploy_db_url(backend: str, tmp_path: Path, pg: PgDatabases) -> str:
    """A fresh deploy database at the head revision (sync: pg.fresh runs its own loop)."""
    if backend == "postgresql":
        return pg.fresh(DEPLOY_MIGRATIONS)
    return f"sqlite:///{tmp_path / 'deploy.db'}"


@pytest.fixture
async def deployments(deploy_db_url: str) -> AsyncIterator[DeploymentStore]:
    db = Database(deploy_db_url)
    await DEPLOY_MIGRATIONS.upgrade(db)  # SQLite's; PostgreSQL's is there already
    yield DeploymentStore(db)
    await db.close()


async def put(blobs: BlobStore, data: bytes) -> str:
    writer = await blobs.writer()
    await writer.write(data)
    return await writer.commit()


async def listed(blobs: BlobStore) -> dict[str, BlobInfo]:
    return {info.key: info async for batch in blobs.list_blobs() for info in batch}


async def exists(blobs: BlobStore, key: str) -> bool:
    try:
        await blobs.stat(key)
    except BlobMissing:
        return False
    return True


async def settle_clock(blobs: BlobStore) -> None:
    """Let the blobs written next be stamped later than those before: S3 stamps to the second,
    a file system to its clock tick."""
    await asyncio.sleep(1.1 if isinstance(blobs, S3BlobStore) else 0.05)


async def now_after(blobs: BlobStore, young: list[str]) -> datetime:
    """A pass's `now` for which the `young` blobs (written last) are within the grace period
    and every blob written before `settle_clock` is past it."""
    stamps = await listed(blobs)
    return min(stamps[key].modified for key in young) + GRACE


def gauge(name: str, store: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"store": store})


async def record(store: DatasetStore, key: str, size: int, created: datetime) -> str:
    dataset = await store.create_dataset(
        owner="alice",
        name=f"{key}.jsonl",
        analysis=Analysis(Format.TEXT, 1),
        size_bytes=size,
        sha256="0" * 64,
        blob_key=key,
        now=created,
    )
    return dataset.id


async def foreign_names(blobs: BlobStore) -> Callable[[], Awaitable[list[str]]]:
    """Plant names that are no blobs of ours (another application's, in a shared bucket or
    directory); returns what lists those still there."""
    if isinstance(blobs, LocalBlobStore):
        objects = blobs.root / "objects"
        key = new_key()
        planted = [objects / key[:2] / f"{key}.tmp", objects / key[:2] / key.upper()]
        planted += [objects / "zz" / new_key(), objects / "README"]
        for path in planted:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"not ours")
            os.utime(path, (0, 0))  # as old as can be

        async def local_left() -> list[str]:
            return sorted(str(p) for p in planted if p.exists())

        return local_left
    assert isinstance(blobs, S3BlobStore)
    s3 = await blobs._s3()
    bucket, prefix = blobs.config.bucket, blobs.config.prefix
    names = [
        f"{prefix}{new_key()}.tmp",
        f"{prefix}{new_key().upper()}",
        f"{prefix}sub/{new_key()}",
        f"{prefix}README",
        prefix.rstrip("/") + new_key(),  # beside the prefix, not under it
    ]
    for name in names:
        await s3.put_object(Bucket=bucket, Key=name, Body=b"not ours")

    async def s3_left() -> list[str]:
        found = []
        for name in names:
            listing = await s3.list_objects_v2(Bucket=bucket, Prefix=name)
            found += [o.get("Key", "") for o in listing.get("Contents", []) if o.get("Key") == name]
        return sorted(found)

    return s3_left


# Datasets ----------------------------------------------------------------------------------


async def test_old_orphans_go_young_ones_and_owned_ones_stay_and_lost_bytes_are_reported(
    blobs: BlobStore, datasets: DatasetStore
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=1)
    owned = await put(blobs, b"{}\n")
    await record(datasets, owned, 3, long_ago)
    await put(blobs, b"left by a crash")  # an orphan: nothing will ever record it
    lost = await put(blobs, b"{}\n")
    lost_id = await record(datasets, lost, 3, long_ago)
    await blobs.delete(lost)  # its bytes are gone, the record stays
    foreign_left = await foreign_names(blobs)
    planted = await foreign_left()
    await settle_clock(blobs)
    young = await put(blobs, b"being recorded")  # its record is on its way
    young_owned = await put(blobs, b"{}\n")
    await record(datasets, young_owned, 3, datetime.now(UTC))
    now = await now_after(blobs, [young, young_owned])
    removed_before = gauge("tunelab_storage_unowned_removed_total", "datasets") or 0

    first = await reconcile_datasets(datasets, blobs, now=now, grace=GRACE)

    assert (first.blobs, first.removed) == (3, 1)  # what is left
    assert first.bytes == 3 + len(b"being recorded") + 3
    assert first.missing == [f"dataset {lost_id}"]
    assert sorted(await listed(blobs)) == sorted([owned, young, young_owned])
    assert await foreign_left() == planted  # names that are not ours are never touched
    assert gauge("tunelab_storage_missing_blobs", "datasets") == 1
    assert gauge("tunelab_storage_blobs", "datasets") == 3
    assert gauge("tunelab_storage_bytes", "datasets") == first.bytes
    assert gauge("tunelab_storage_unowned_removed_total", "datasets") == removed_before + 1

    # Later, past the young one's grace too; and with the lost dataset deleted, nothing missing.
    await datasets.delete_dataset("alice", lost_id)
    second = await reconcile_datasets(datasets, blobs, now=now + GRACE, grace=GRACE)
    assert (second.blobs, second.removed, second.missing) == (2, 1, [])
    assert sorted(await listed(blobs)) == sorted([owned, young_owned])
    assert gauge("tunelab_storage_missing_blobs", "datasets") == 0
    assert gauge("tunelab_storage_blobs", "datasets") == 2
    assert await foreign_left() == planted


@pytest.mark.parametrize("page", [2, 5])
async def test_paging_walks_both_sides_across_page_boundaries(
    blobs: BlobStore, datasets: DatasetStore, page: int
) -> None:
    """Five records read two at a time (or five: a full last page), with orphans between,
    before and after them."""
    long_ago = datetime.now(UTC) - timedelta(days=1)
    keys = sorted([await put(blobs, f"blob {i}".encode()) for i in range(11)])
    owned, orphans = keys[1::2], keys[0::2]  # orphan, owned, orphan, ..., owned, orphan
    assert (len(owned), len(orphans)) == (5, 6)
    ids = {key: await record(datasets, key, 6, long_ago) for key in owned}
    await blobs.delete(owned[2])  # the middle one (in the second page of two)
    await settle_clock(blobs)
    young = await put(blobs, b"young")

    done = await reconcile(
        "datasets",
        blobs,
        datasets.owned_after,
        datasets.blob_keys_in_use,
        now=await now_after(blobs, [young]),
        grace=GRACE,
        page=page,
    )

    assert (done.blobs, done.removed) == (5, 6)  # 4 owned left and the young one
    assert done.missing == [f"dataset {ids[owned[2]]}"]
    assert sorted(await listed(blobs)) == sorted([*owned[:2], *owned[3:], young])


class _Hiding:
    """A store whose listing leaves one blob out, as a listing that passed a key before the
    blob was written there does."""

    def __init__(self, blobs: BlobStore, hidden: str) -> None:
        self._blobs = blobs
        self._hidden = hidden

    async def list_blobs(self) -> AsyncIterator[list[BlobInfo]]:
        async for batch in self._blobs.list_blobs():
            yield [info for info in batch if info.key != self._hidden]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


async def test_what_changed_during_the_walk_is_not_misreported(
    blobs: BlobStore, datasets: DatasetStore
) -> None:
    """Each finding is checked again before it counts: a dataset deleted meanwhile is not
    "missing", a blob recorded meanwhile is not removed, a blob written meanwhile (a listing is
    no snapshot) is not "missing"."""
    long_ago = datetime.now(UTC) - timedelta(days=1)
    gone = await put(blobs, b"its bytes are lost")
    gone_id = await record(datasets, gone, 3, long_ago)
    await blobs.delete(gone)
    unrecorded = await put(blobs, b"no record names it when the walk lists it")
    late = await put(blobs, b"written after the listing passed its key")
    await record(datasets, late, 3, long_ago)
    now = datetime.now(UTC) + 2 * GRACE

    async def all_in_use(keys: list[str]) -> set[str]:
        return set(keys)  # every blob got its record between the walk and the check

    async def none_in_use(keys: list[str]) -> set[str]:
        return set()  # every record went between the walk and the check

    recorded_meanwhile = await reconcile(
        "datasets", blobs, datasets.owned_after, all_in_use, now=now, grace=GRACE
    )
    assert recorded_meanwhile.removed == 0
    assert await exists(blobs, unrecorded)
    assert recorded_meanwhile.missing == [f"dataset {gone_id}"]  # that one is truly missing
    assert gauge("tunelab_storage_missing_blobs", "datasets") == 1

    deleted_meanwhile = await reconcile(
        "datasets", blobs, datasets.owned_after, none_in_use, now=now, grace=GRACE
    )
    assert deleted_meanwhile.missing == []
    assert gauge("tunelab_storage_missing_blobs", "datasets") == 0
    assert deleted_meanwhile.removed == 1  # the unrecorded blob, which nothing names still
    assert not await exists(blobs, unrecorded)

    written_meanwhile = await reconcile(
        "datasets",
        cast(BlobStore, _Hiding(blobs, late)),
        datasets.owned_after,
        datasets.blob_keys_in_use,
        now=now,
        grace=GRACE,
    )
    assert written_meanwhile.missing == [f"dataset {gone_id}"]  # and not the late one
    assert (written_meanwhile.blobs, written_meanwhile.removed) == (0, 0)
    assert await exists(blobs, late)


async def test_records_made_after_the_pass_began_are_not_reported(
    blobs: BlobStore, datasets: DatasetStore
) -> None:
    """A pass's `now` is when it began: a record made later, blob or not, is the next pass's."""
    now = datetime.now(UTC)
    dangling = await put(blobs, b"x")
    later_id = await record(datasets, dangling, 1, now + timedelta(seconds=1))
    await blobs.delete(dangling)

    assert (await reconcile_datasets(datasets, blobs, now=now, grace=GRACE)).missing == []
    later = await reconcile_datasets(datasets, blobs, now=now + GRACE, grace=GRACE)
    assert later.missing == [f"dataset {later_id}"]


# Deploy outputs ----------------------------------------------------------------------------


async def finished_run(
    store: DeploymentStore, blobs: BlobStore, data: bytes | None, at: datetime
) -> tuple[str, str]:
    """A finished run whose output (`data`, in the store; None: the record only) arrived `at`;
    returns its id and its output's key."""
    spec = parse(
        api.DeploymentSpec(
            provider="local",
            dataset_id="ds_x",
            method=pb.TRAINING_METHOD_SFT,
            limits=pb.Limits(max_runtime_minutes=5, max_cost_usd=10),
        ),
        default_image="unused",
    )
    d = await store.create(
        owner="alice",
        request_id=None,
        spec=spec,
        dataset_sha256="0" * 64,
        dataset_size=1,
        hourly_usd=0,
        now=at,
    )
    key = new_key() if data is None else await put(blobs, data)
    size = 0 if data is None else len(data)
    output = Output(key, size, "0" * 64, at)
    await store.mutate(d.id, at, lambda _: Change(state=State.SUCCEEDED, output=output))
    return d.id, key


async def test_output_upkeep_removes_orphans_and_reports_missing_outputs(
    blobs: BlobStore, deployments: DeploymentStore, caplog: pytest.LogCaptureFixture
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=1)
    kept_id, kept = await finished_run(deployments, blobs, b"adapter", long_ago)
    lost_id, lost = await finished_run(deployments, blobs, None, long_ago)
    orphan = await put(blobs, b"an output whose record never came")
    await settle_clock(blobs)
    young = await put(blobs, b"an output being recorded")
    settings = DeploySettings(stale_upload_hours=GRACE.total_seconds() / 3600)

    with caplog.at_level(logging.INFO, logger="services"):
        await upkeep_once(deployments, blobs, settings, await now_after(blobs, [young]))

    assert sorted(await listed(blobs)) == sorted([kept, young])
    assert gauge("tunelab_storage_missing_blobs", "outputs") == 1
    assert gauge("tunelab_storage_blobs", "outputs") == 2
    (report,) = [r for r in caplog.records if r.getMessage().startswith("stored bytes are missing")]
    assert (getattr(report, "row", None), getattr(report, "blob_key", None)) == (
        f"deployment {lost_id}",
        lost,
    )
    (summary,) = [r for r in caplog.records if r.getMessage() == "output storage kept"]
    assert (getattr(summary, "unowned_removed", None), getattr(summary, "missing", None)) == (1, 1)
    assert orphan not in await listed(blobs)
    still = await deployments.get_any(kept_id)
    assert still is not None
    assert still.output is not None
    assert still.output.blob_key == kept  # an owned output is the upkeep's to keep


async def test_reconcile_returns_what_it_found(blobs: BlobStore) -> None:
    """With no records at all, every old blob goes; the totals count what is left."""
    keys = [await put(blobs, b"x" * n) for n in (1, 2, 3)]

    async def no_rows(after: str, limit: int) -> list[Owned]:
        return []

    async def none_in_use(keys: list[str]) -> set[str]:
        return set()

    done = await reconcile(
        "scratch", blobs, no_rows, none_in_use, now=datetime.now(UTC) + 2 * GRACE, grace=GRACE
    )
    assert done == Reconciled(blobs=0, bytes=0, removed=3, missing=[])
    assert not [key for key in keys if await exists(blobs, key)]
