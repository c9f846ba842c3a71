"""The DatasetsService contract over real gRPC, on SQLite and PostgreSQL, with the datasets'
bytes on local storage and on S3 (a real SeaweedFS)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select, text

from services.common.errors import RemoteError
from services.common.identity import INTERNAL_TOKEN_KEY, USER_KEY
from services.datasets.models import DownloadEventRow
from services.datasets.store import DatasetStore
from tests.contract.conftest import Datasets, local_only, rpc_error
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_service_pb2 as api
from tunelab.datasets.v1 import datasets_service_pb2_grpc as api_grpc

SFT_ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
SFT = b"".join(json.dumps(SFT_ROW).encode() + b"\n" for _ in range(100))


def reason(error: grpc.aio.AioRpcError) -> str:
    return RemoteError.from_rpc_error(error).reason


# --- uploads ---------------------------------------------------------------------------------


async def test_upload_records_hash_size_rows_and_format(datasets: Datasets) -> None:
    reply = await datasets.upload(SFT, chunk=777)
    d = reply.dataset
    assert d.id.startswith("ds_")
    assert (d.name, d.size_bytes, d.row_count) == ("train.jsonl", len(SFT), 100)
    assert d.sha256 == hashlib.sha256(SFT).hexdigest()
    assert d.format == pb.DATASET_FORMAT_SFT_CHAT
    assert not d.HasField("format_error")
    [blob] = await datasets.stored()
    assert blob.size == len(SFT)
    assert await datasets.stored_bytes(blob.key) == SFT
    assert await datasets.unfinished_uploads() == []


async def test_invalid_file_is_stored_with_the_first_bad_line(datasets: Datasets) -> None:
    data = SFT[: len(SFT) // 2] + b'{"messages": oops}\n' + SFT
    d = (await datasets.upload(data)).dataset
    assert d.format == pb.DATASET_FORMAT_INVALID
    assert d.format_error.line == 51
    assert "line 51 is not valid JSON" in d.format_error.reason
    assert d.row_count == 151


async def test_zero_byte_file(datasets: Datasets) -> None:
    d = (await datasets.upload(b"")).dataset
    assert (d.size_bytes, d.row_count, d.sha256) == (0, 0, hashlib.sha256(b"").hexdigest())
    assert d.format == pb.DATASET_FORMAT_INVALID
    assert d.format_error.line == 0


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path.jsonl", "nul\x00.jsonl", ""])
async def test_hostile_names_are_refused_and_nothing_is_kept(datasets: Datasets, name: str) -> None:
    # A body far longer than what is read before the refusal: the status must still arrive.
    error = await rpc_error(datasets.upload(SFT * 100, name=name, chunk=4096))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert RemoteError.from_rpc_error(error).metadata["field"] == "name"
    assert await datasets.stored() == []
    listed = await datasets.stub.ListDatasets(api.ListDatasetsRequest(), metadata=datasets.as_())
    assert list(listed.datasets) == []


async def test_upload_must_start_with_the_name(datasets: Datasets) -> None:
    async def chunk_first() -> AsyncIterator[api.UploadDatasetRequest]:
        yield api.UploadDatasetRequest(chunk=b"{}")

    error = await rpc_error(
        datasets.stub.UploadDataset(chunk_first(), metadata=datasets.as_(), timeout=60)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def two_names() -> AsyncIterator[api.UploadDatasetRequest]:
        yield api.UploadDatasetRequest(name="a.jsonl")
        yield api.UploadDatasetRequest(name="b.jsonl")

    error = await rpc_error(
        datasets.stub.UploadDataset(two_names(), metadata=datasets.as_(), timeout=60)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await datasets.unfinished_uploads() == []


async def test_too_large_upload_is_refused_and_discarded(datasets: Datasets) -> None:
    big = SFT * (datasets.settings.max_upload_bytes // len(SFT) + 1)
    error = await rpc_error(datasets.upload(big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    remote = RemoteError.from_rpc_error(error)
    assert remote.reason == "PAYLOAD_TOO_LARGE"
    assert remote.metadata["limit_bytes"] == str(datasets.settings.max_upload_bytes)
    assert await datasets.stored() == []
    assert await datasets.unfinished_uploads() == []


async def test_upload_cancelled_midway_leaves_nothing(datasets: Datasets) -> None:
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[api.UploadDatasetRequest]:
        yield api.UploadDatasetRequest(name="x.jsonl")
        yield api.UploadDatasetRequest(chunk=SFT)
        sent.set()
        await asyncio.sleep(30)

    call = datasets.stub.UploadDataset(stalls(), metadata=datasets.as_(), timeout=60)
    await sent.wait()
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):  # the server notices the cancellation asynchronously
        if not await datasets.unfinished_uploads():
            break
        await asyncio.sleep(0.05)
    assert await datasets.unfinished_uploads() == []
    assert await datasets.stored() == []


# --- reading, listing, deleting --------------------------------------------------------------


async def test_user_ids_are_unicode(datasets: Datasets) -> None:
    for user in ("josé", "用户", "alice@example.com", "auth0|5f7c8ec7c33c6c004bbafe82"):
        d = (await datasets.upload(SFT, user=user)).dataset
        mine = await datasets.stub.ListDatasets(
            api.ListDatasetsRequest(), metadata=datasets.as_(user)
        )
        assert [x.id for x in mine.datasets] == [d.id]


async def test_another_users_dataset_is_not_found_everywhere(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    mallory = datasets.as_("mallory")
    calls = [
        datasets.stub.GetDataset(api.GetDatasetRequest(dataset_id=d.id), metadata=mallory),
        datasets.stub.DeleteDataset(api.DeleteDatasetRequest(dataset_id=d.id), metadata=mallory),
        datasets.stub.CreateDownloadToken(
            api.CreateDownloadTokenRequest(dataset_id=d.id), metadata=mallory
        ),
        datasets.stub.ListDownloadTokens(
            api.ListDownloadTokensRequest(dataset_id=d.id), metadata=mallory
        ),
        datasets.stub.ListDownloadEvents(
            api.ListDownloadEventsRequest(dataset_id=d.id), metadata=mallory
        ),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert d.name not in (error.details() or "")
    listed = await datasets.stub.ListDatasets(api.ListDatasetsRequest(), metadata=mallory)
    assert list(listed.datasets) == []
    still = await datasets.stub.GetDataset(
        api.GetDatasetRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert still.dataset == d


async def test_list_pages_newest_first_and_stays_stable_under_inserts(datasets: Datasets) -> None:
    ids = []
    for i in range(5):
        ids.append((await datasets.upload(SFT, name=f"d{i}.jsonl")).dataset.id)
        datasets.clock.advance(1)
    first = await datasets.stub.ListDatasets(
        api.ListDatasetsRequest(page_size=2), metadata=datasets.as_()
    )
    assert [d.id for d in first.datasets] == ids[::-1][:2]
    await datasets.upload(SFT, name="newer.jsonl")  # must not shift the pages already cut
    seen = [d.id for d in first.datasets]
    token = first.next_page_token
    while token:
        page = await datasets.stub.ListDatasets(
            api.ListDatasetsRequest(page_size=2, page_token=token), metadata=datasets.as_()
        )
        seen += [d.id for d in page.datasets]
        token = page.next_page_token
    assert seen == ids[::-1]


async def test_page_tokens_are_checked(datasets: Datasets) -> None:
    for i in range(3):
        await datasets.upload(SFT, name=f"d{i}.jsonl")
    page = await datasets.stub.ListDatasets(
        api.ListDatasetsRequest(page_size=1), metadata=datasets.as_()
    )
    for forged, who in ((page.next_page_token, "mallory"), ("not-a-token", None)):
        error = await rpc_error(
            datasets.stub.ListDatasets(
                api.ListDatasetsRequest(page_token=forged), metadata=datasets.as_(who)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(error) == "INVALID_PAGE_TOKEN"
    error = await rpc_error(
        datasets.stub.ListDatasets(api.ListDatasetsRequest(page_size=-1), metadata=datasets.as_())
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_removes_file_and_tokens_but_keeps_the_audit(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=5)
    await datasets.redeem(minted.token)
    await datasets.stub.DeleteDataset(
        api.DeleteDatasetRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert await datasets.stored() == []
    error = await rpc_error(datasets.redeem(minted.token))
    assert reason(error) == "TOKEN_UNKNOWN"
    async with datasets.db.session() as session:
        events = (await session.scalars(select(DownloadEventRow))).all()
    assert [e.outcome for e in sorted(events, key=lambda e: e.occurred_at)] == [
        "granted",
        "refused",
    ]
    error = await rpc_error(
        datasets.stub.GetDataset(api.GetDatasetRequest(dataset_id=d.id), metadata=datasets.as_())
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- credentials -----------------------------------------------------------------------------


async def test_calls_need_the_internal_credential_and_a_user(datasets: Datasets) -> None:
    for metadata in ((), ((INTERNAL_TOKEN_KEY, "wrong"),), ((INTERNAL_TOKEN_KEY, ""),)):
        async with grpc.aio.insecure_channel(datasets.address) as bare:
            stub = api_grpc.DatasetsServiceStub(bare)
            error = await rpc_error(
                stub.ListDatasets(api.ListDatasetsRequest(), metadata=(*metadata, (USER_KEY, b"a")))
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            health = await health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    error = await rpc_error(datasets.stub.ListDatasets(api.ListDatasetsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(
        datasets.stub.ListDatasets(api.ListDatasetsRequest(), metadata=((USER_KEY, b"a" * 256),))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for bad in (b"\xff\xfe", b"nul\x00", b"bell\x07"):
        error = await rpc_error(
            datasets.stub.ListDatasets(api.ListDatasetsRequest(), metadata=((USER_KEY, bad),))
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- download tokens -------------------------------------------------------------------------


async def test_minted_token_defaults_and_only_its_hash_is_stored(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    assert minted.token.startswith("tldl_")
    assert len(minted.token) == 5 + 43  # 256 random bits, base64url
    assert minted.url == f"https://tunelab.example/v1/dataset-downloads/{minted.token}"
    assert minted.max_uses == 1
    lifetime = minted.expires_at.ToDatetime().timestamp() - datasets.clock.now.timestamp()
    assert lifetime == pytest.approx(7200, abs=1)
    async with datasets.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM download_tokens"))).all()
    dump = repr(rows)
    assert minted.token not in dump
    assert minted.token.removeprefix("tldl_") not in dump
    assert hashlib.sha256(minted.token.encode()).hexdigest() in dump


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl_seconds": 7201}, "ttl_seconds"),
        ({"ttl_seconds": -5}, "ttl_seconds"),
        ({"max_uses": 1001}, "max_uses"),
        ({"max_uses": -1}, "max_uses"),
    ],
)
async def test_token_limits(datasets: Datasets, kwargs: dict[str, int], field: str) -> None:
    d = (await datasets.upload(SFT)).dataset
    error = await rpc_error(datasets.mint(d.id, **kwargs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert RemoteError.from_rpc_error(error).metadata["field"] == field


async def test_redeem_whole_file_and_ranges(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=10)
    whole = await datasets.redeem(minted.token)
    assert (whole.offset, whole.length, whole.partial) == (0, len(SFT), False)
    assert (whole.sha256, whole.name, whole.size_bytes) == (d.sha256, d.name, len(SFT))
    assert whole.remaining_uses == 9
    part = await datasets.redeem(minted.token, range="bytes=100-")
    assert (part.offset, part.length, part.partial) == (100, len(SFT) - 100, True)
    stale = await datasets.redeem(minted.token, range="bytes=100-", if_range='"other"')
    assert (stale.offset, stale.partial) == (0, False)


async def test_a_get_grant_names_a_source_that_serves_exactly_the_datasets_bytes(
    datasets: Datasets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=10)
    checked = await datasets.redeem(minted.token, http_method="HEAD")
    assert checked.source_url == ""  # a HEAD sends no bytes: nothing to fetch
    whole = await datasets.redeem(minted.token)
    part = await datasets.redeem(minted.token, range="bytes=100-199")
    assert whole.source_url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(timeout=10) as client:
        got = await client.get(whole.source_url)
        ranged = await client.get(part.source_url, headers={"Range": "bytes=100-199"})
    assert (got.status_code, got.content) == (200, SFT)
    assert hashlib.sha256(got.content).hexdigest() == d.sha256
    assert (ranged.status_code, ranged.content) == (206, SFT[100:200])
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(SFT)}"
    # The URL is a credential: the service never logs it (the test's own client does).
    logged = "\n".join(
        r.getMessage() + repr(r.__dict__)
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    )
    assert "dataset stored" in logged  # the service's logs were captured
    for url in (whole.source_url, part.source_url):
        assert url not in logged
        assert signature(url) not in logged


def signature(url: str) -> str:
    """The signature a source URL carries: the blob listener's, or S3's presigned one."""
    query = parse_qs(urlsplit(url).query)
    [value] = query.get("signature") or query["X-Amz-Signature"]
    return value


async def test_single_use_token_is_refused_the_second_time(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    await datasets.redeem(minted.token)
    error = await rpc_error(datasets.redeem(minted.token))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(error) == "TOKEN_USED_UP"


async def test_head_and_unsatisfiable_ranges_use_nothing(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    checked = await datasets.redeem(minted.token, http_method="HEAD")
    assert checked.remaining_uses == 1
    error = await rpc_error(datasets.redeem(minted.token, range=f"bytes={len(SFT)}-"))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert RemoteError.from_rpc_error(error).metadata == {"size": str(len(SFT))}
    granted = await datasets.redeem(minted.token)  # the one use is still there
    assert granted.remaining_uses == 0
    error = await rpc_error(datasets.redeem(minted.token, http_method="DELETE"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_expired_revoked_and_unknown_tokens(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    short = await datasets.mint(d.id, ttl_seconds=60)
    revoked = await datasets.mint(d.id)
    datasets.clock.advance(61)
    error = await rpc_error(datasets.redeem(short.token))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "TOKEN_EXPIRED")
    for _ in range(2):  # revoking twice is fine
        await datasets.stub.RevokeDownloadToken(
            api.RevokeDownloadTokenRequest(dataset_id=d.id, token_id=revoked.token_id),
            metadata=datasets.as_(),
        )
    error = await rpc_error(datasets.redeem(revoked.token))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "TOKEN_REVOKED")
    for made_up in (
        "tldl_" + "A" * 43,
        "tldl_../../etc/passwd",
        "",
        "x" * 5000,
        revoked.token + "x",
    ):
        error = await rpc_error(datasets.redeem(made_up))
        assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "TOKEN_UNKNOWN")
    error = await rpc_error(
        datasets.stub.RevokeDownloadToken(
            api.RevokeDownloadTokenRequest(dataset_id=d.id, token_id="dt_nope"),
            metadata=datasets.as_(),
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_every_attempt_is_audited(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    await datasets.redeem(minted.token, client_ip="10.0.0.7", user_agent="curl/8", range="bytes=0-")
    datasets.clock.advance(1)
    await rpc_error(datasets.redeem(minted.token, client_ip="10.0.0.8"))
    await rpc_error(datasets.redeem("tldl_" + "Z" * 43, client_ip="10.0.0.9"))
    events = (
        await datasets.stub.ListDownloadEvents(
            api.ListDownloadEventsRequest(dataset_id=d.id), metadata=datasets.as_()
        )
    ).download_events
    assert [(e.outcome, e.reason, e.client_ip) for e in events] == [
        (pb.DOWNLOAD_OUTCOME_REFUSED, "TOKEN_USED_UP", "10.0.0.8"),
        (pb.DOWNLOAD_OUTCOME_GRANTED, "", "10.0.0.7"),
    ]
    assert events[1].token_id == minted.token_id
    assert (events[1].user_agent, events[1].range) == ("curl/8", "bytes=0-")
    async with datasets.db.session() as session:
        stranger = await session.scalar(
            select(DownloadEventRow).where(DownloadEventRow.client_ip == "10.0.0.9")
        )
    assert stranger is not None
    assert (stranger.outcome, stranger.reason, stranger.dataset_id) == (
        "refused",
        "TOKEN_UNKNOWN",
        None,
    )
    assert (
        stranger.token_fingerprint == hashlib.sha256(("tldl_" + "Z" * 43).encode()).hexdigest()[:16]
    )


@pytest.mark.parametrize("uses", [1, 3])
async def test_concurrent_redemptions_grant_exactly_max_uses(datasets: Datasets, uses: int) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=uses)
    results = await asyncio.gather(
        *(datasets.redeem(minted.token) for _ in range(20)), return_exceptions=True
    )
    granted = [r for r in results if isinstance(r, api.RedeemDownloadTokenResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == uses
    assert len(refused) == 20 - uses
    assert {reason(e) for e in refused} == {"TOKEN_USED_UP"}
    assert sorted(g.remaining_uses for g in granted) == list(range(uses))
    tokens = await datasets.stub.ListDownloadTokens(
        api.ListDownloadTokensRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert tokens.download_tokens[0].use_count == uses
    assert tokens.download_tokens[0].state == pb.DOWNLOAD_TOKEN_STATE_USED_UP


async def test_expired_tokens_are_purged_but_their_audit_stays(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    old = await datasets.mint(d.id, ttl_seconds=10)
    fresh = await datasets.mint(d.id)
    await datasets.redeem(old.token)
    datasets.clock.advance(11)
    assert await DatasetStore(datasets.db).purge_expired(datasets.clock()) == 1
    tokens = await datasets.stub.ListDownloadTokens(
        api.ListDownloadTokensRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert [t.id for t in tokens.download_tokens] == [fresh.token_id]
    error = await rpc_error(datasets.redeem(old.token))
    assert reason(error) == "TOKEN_UNKNOWN"
    events = await datasets.stub.ListDownloadEvents(
        api.ListDownloadEventsRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert [e.token_id for e in events.download_events] == [old.token_id]


async def test_purges_go_a_batch_at_a_time(datasets: Datasets) -> None:
    for i in range(7):
        await rpc_error(datasets.redeem(f"tldl_{i:043d}"))
    datasets.clock.advance(10)
    store = DatasetStore(datasets.db)
    removed = await store._purge(
        DownloadEventRow.id, DownloadEventRow.occurred_at < datasets.clock.now, batch=3
    )
    assert removed == 7
    async with datasets.db.session() as session:
        assert (await session.scalars(select(DownloadEventRow))).all() == []


async def test_old_audit_records_are_purged_after_the_retention_period(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=2)
    await datasets.redeem(minted.token)
    datasets.clock.advance(100)
    await datasets.redeem(minted.token)
    store = DatasetStore(datasets.db)
    assert await store.purge_events(datasets.clock.now - timedelta(seconds=50)) == 1
    events = await datasets.stub.ListDownloadEvents(
        api.ListDownloadEventsRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert len(events.download_events) == 1


@local_only("a symlink planted in the storage directory: local storage has one, S3 has none")
async def test_symlink_planted_in_storage_is_refused_and_audited(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    [blob] = datasets.local_blob_files()
    blob.unlink()
    blob.symlink_to("/etc/passwd")
    error = await rpc_error(datasets.redeem(minted.token))
    assert (error.code(), reason(error)) == (grpc.StatusCode.DATA_LOSS, "STORAGE_UNAVAILABLE")
    assert "passwd" not in (error.details() or "")
    tokens = await datasets.stub.ListDownloadTokens(
        api.ListDownloadTokensRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert tokens.download_tokens[0].use_count == 0
    events = await datasets.stub.ListDownloadEvents(
        api.ListDownloadEventsRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    assert [e.reason for e in events.download_events] == ["STORAGE_UNAVAILABLE"]


async def finish(datasets: Datasets, grant: api.RedeemDownloadTokenResponse, sent: int) -> None:
    await datasets.stub.FinishDownload(
        api.FinishDownloadRequest(grant_id=grant.grant_id, bytes_sent=sent)
    )


async def test_finished_downloads_record_bytes_sent(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id, max_uses=2)
    first = await datasets.redeem(minted.token)
    assert first.grant_id.startswith("de_")
    await finish(datasets, first, 1000)  # the connection broke after 1000 bytes
    await finish(datasets, first, 10)  # a repeated report changes nothing
    resumed = await datasets.redeem(minted.token, range="bytes=1000-")
    await finish(datasets, resumed, resumed.length)
    events = await datasets.stub.ListDownloadEvents(
        api.ListDownloadEventsRequest(dataset_id=d.id), metadata=datasets.as_()
    )
    sent = {e.id: (e.bytes_granted, e.bytes_sent) for e in events.download_events}
    assert sent == {
        first.grant_id: (len(SFT), 1000),
        resumed.grant_id: (len(SFT) - 1000, len(SFT) - 1000),
    }
    assert reason(await rpc_error(datasets.redeem(minted.token))) == "TOKEN_USED_UP"


async def test_a_download_that_sent_nothing_gives_its_use_back(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    failed = await datasets.redeem(minted.token)  # e.g. the gateway could not open the file
    await finish(datasets, failed, 0)
    await finish(datasets, failed, 0)  # only once
    again = await datasets.redeem(minted.token)
    await finish(datasets, again, again.length)
    assert reason(await rpc_error(datasets.redeem(minted.token))) == "TOKEN_USED_UP"
    empty = (await datasets.upload(b"", name="empty.jsonl")).dataset
    single = await datasets.mint(empty.id)
    await finish(datasets, await datasets.redeem(single.token), 0)  # 0 of 0: a whole download
    assert reason(await rpc_error(datasets.redeem(single.token))) == "TOKEN_USED_UP"


async def test_head_grants_nothing_to_finish(datasets: Datasets) -> None:
    d = (await datasets.upload(SFT)).dataset
    minted = await datasets.mint(d.id)
    assert (await datasets.redeem(minted.token, http_method="HEAD")).grant_id == ""
    error = await rpc_error(
        datasets.stub.FinishDownload(api.FinishDownloadRequest(grant_id="de_x", bytes_sent=-1))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(
        datasets.stub.FinishDownload(api.FinishDownloadRequest(grant_id="de_x", bytes_sent=1))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    grant = await datasets.redeem(minted.token)
    error = await rpc_error(finish(datasets, grant, grant.length + 1))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
