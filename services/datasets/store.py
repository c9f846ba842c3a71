"""The datasets service's persistence: every query scoped to its owner, domain objects out.

No ORM object leaves this module; callers get the frozen dataclasses below. Another user's
dataset or token is NOT_FOUND, exactly like a missing one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.common import bearer, ids
from services.common.db import Database
from services.common.errors import ServiceError, not_found, reason_name, storage_unavailable
from services.common.pagination import Cursor, Page, newest_first, page
from services.common.reconcile import Owned
from services.common.redact import DOWNLOAD_TOKEN_PREFIX
from services.datasets import ranges
from services.datasets.formats import Analysis, Format
from services.datasets.models import DatasetRow, DownloadEventRow, DownloadTokenRow
from tunelab.common.v1 import errors_pb2

log = logging.getLogger(__name__)

DOWNLOAD_TOKENS = bearer.BearerTokens(DOWNLOAD_TOKEN_PREFIX)


@dataclass(frozen=True)
class Dataset:
    id: str
    owner: str
    name: str
    size_bytes: int
    sha256: str
    row_count: int
    format: Format
    format_error_line: int | None
    format_error_reason: str | None
    blob_key: str
    created_at: datetime


class TokenState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    USED_UP = "used_up"
    REVOKED = "revoked"


@dataclass(frozen=True)
class DownloadToken:
    id: str
    dataset_id: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    use_count: int
    revoked_at: datetime | None

    def state(self, now: datetime) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at <= now:
            return TokenState.EXPIRED
        if self.use_count >= self.max_uses:
            return TokenState.USED_UP
        return TokenState.ACTIVE


@dataclass(frozen=True)
class MintedToken:
    token: DownloadToken
    secret: str


class Outcome(enum.StrEnum):
    GRANTED = "granted"
    CHECKED = "checked"
    REFUSED = "refused"


@dataclass(frozen=True)
class DownloadEvent:
    id: str
    token_id: str | None
    dataset_id: str | None
    occurred_at: datetime
    outcome: Outcome
    reason: str
    range: str
    client_ip: str
    user_agent: str
    request_id: str
    bytes_granted: int | None
    bytes_sent: int | None


@dataclass(frozen=True)
class DownloadRequest:
    """One attempt to download by token, as the gateway saw it."""

    secret: str
    method: str
    range: str
    if_range: str
    client_ip: str
    user_agent: str
    request_id: str


@dataclass(frozen=True)
class Grant:
    dataset: Dataset
    span: ranges.Span
    remaining_uses: int
    expires_at: datetime
    grant_id: str  # empty for HEAD


BlobCheck = Callable[[Dataset], Awaitable[bool]]


class DatasetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Datasets -----------------------------------------------------------------------------

    async def create_dataset(
        self,
        *,
        owner: str,
        name: str,
        analysis: Analysis,
        size_bytes: int,
        sha256: str,
        blob_key: str,
        now: datetime,
    ) -> Dataset:
        row = DatasetRow(
            id=ids.new_id("ds"),
            owner=owner,
            name=name,
            size_bytes=size_bytes,
            sha256=sha256,
            row_count=analysis.rows,
            format=analysis.format.value,
            format_error_line=analysis.error_line,
            format_error_reason=analysis.error_reason,
            blob_key=blob_key,
            created_at=now,
        )
        async with self.db.session(write=True) as session:
            session.add(row)
        return _dataset(row)

    async def get_dataset(self, owner: str, dataset_id: str) -> Dataset:
        async with self.db.session() as session:
            return _dataset(await _owned_dataset(session, owner, dataset_id))

    async def list_datasets(self, owner: str, size: int, page_token: str) -> Page[Dataset]:
        scope = f"datasets:{owner}"
        query = newest_first(
            select(DatasetRow).where(DatasetRow.owner == owner),
            DatasetRow.created_at,
            DatasetRow.id,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            rows = list((await session.scalars(query)).all())
        return page([_dataset(r) for r in rows], size, scope, lambda d: d.created_at)

    async def delete_dataset(self, owner: str, dataset_id: str) -> Dataset:
        """Delete the record and its tokens; the caller removes the blob afterwards."""
        async with self.db.session(write=True) as session:
            row = await _owned_dataset(session, owner, dataset_id)
            await session.execute(
                delete(DownloadTokenRow).where(DownloadTokenRow.dataset_id == dataset_id)
            )
            await session.delete(row)
        return _dataset(row)

    # Tokens -------------------------------------------------------------------------------

    async def create_token(
        self, owner: str, dataset_id: str, *, ttl: timedelta, max_uses: int, now: datetime
    ) -> MintedToken:
        secret = DOWNLOAD_TOKENS.new_secret()
        row = DownloadTokenRow(
            id=ids.new_id("dt"),
            dataset_id=dataset_id,
            owner=owner,
            token_hash=bearer.digest(secret),
            created_at=now,
            expires_at=now + ttl,
            max_uses=max_uses,
            use_count=0,
            revoked_at=None,
        )
        async with self.db.session(write=True) as session:
            await _owned_dataset(session, owner, dataset_id)
            session.add(row)
        return MintedToken(_token(row), secret)

    async def list_tokens(
        self, owner: str, dataset_id: str, size: int, page_token: str
    ) -> Page[DownloadToken]:
        scope = f"tokens:{dataset_id}"
        query = newest_first(
            select(DownloadTokenRow).where(
                DownloadTokenRow.dataset_id == dataset_id, DownloadTokenRow.owner == owner
            ),
            DownloadTokenRow.created_at,
            DownloadTokenRow.id,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            await _owned_dataset(session, owner, dataset_id)
            rows = list((await session.scalars(query)).all())
        return page([_token(r) for r in rows], size, scope, lambda t: t.created_at)

    async def revoke_token(
        self, owner: str, dataset_id: str, token_id: str, now: datetime
    ) -> DownloadToken:
        """Revoke a token; revoking it again changes nothing."""
        async with self.db.session(write=True) as session:
            await _owned_dataset(session, owner, dataset_id)
            row = await session.scalar(
                select(DownloadTokenRow).where(
                    DownloadTokenRow.id == token_id,
                    DownloadTokenRow.dataset_id == dataset_id,
                    DownloadTokenRow.owner == owner,
                )
            )
            if row is None:
                raise not_found("download token", token_id)
            if row.revoked_at is None:
                row.revoked_at = now
            return _token(row)

    async def blob_keys_in_use(self, keys: list[str], batch: int = 500) -> set[str]:
        """Those of `keys` that some dataset's record names."""
        found: set[str] = set()
        async with self.db.session() as session:
            for start in range(0, len(keys), batch):
                chosen = keys[start : start + batch]
                found |= set(
                    await session.scalars(
                        select(DatasetRow.blob_key).where(DatasetRow.blob_key.in_(chosen))
                    )
                )
        return found

    async def owned_after(self, after: str, limit: int) -> list[Owned]:
        """Datasets' blob keys after `after`, in key order (for reconciliation)."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(DatasetRow.blob_key, DatasetRow.id, DatasetRow.created_at)
                .where(DatasetRow.blob_key > after)
                .order_by(DatasetRow.blob_key)
                .limit(limit)
            )
            return [Owned(key, f"dataset {ident}", created) for key, ident, created in rows]

    async def purge_expired(self, before: datetime) -> int:
        """Forget tokens that expired before `before`; their audit records stay."""
        return await self._purge(DownloadTokenRow.id, DownloadTokenRow.expires_at < before)

    async def purge_events(self, before: datetime) -> int:
        """Delete audit records older than the retention period."""
        return await self._purge(DownloadEventRow.id, DownloadEventRow.occurred_at < before)

    async def _purge(
        self, key: InstrumentedAttribute[str], condition: ColumnElement[bool], batch: int = 2000
    ) -> int:
        """Delete matching rows a batch per transaction: one huge delete would hold SQLite's
        write lock longer than other writers wait for it."""
        table = key.class_
        removed = 0
        while True:
            async with self.db.session(write=True) as session:
                chosen = select(key).where(condition).limit(batch)
                result = await session.execute(delete(table).where(key.in_(chosen)))
            count = int(result.rowcount)  # type: ignore[attr-defined]
            removed += count
            if count < batch:
                return removed

    # Redemption ---------------------------------------------------------------------------

    async def redeem(self, request: DownloadRequest, now: datetime, blob_ok: BlobCheck) -> Grant:
        """Check a token and, for a GET, count one use; every attempt is audited.

        The use is counted by one conditional UPDATE, so of concurrent redemptions of a token
        with one use left exactly one matches the row; the others are refused as used up.
        """
        digest = bearer.digest(request.secret)
        token, dataset = await self._find(request.secret, digest)
        attempt = _Attempt(request, digest, token, dataset, now)
        try:
            if token is None or dataset is None:
                raise _refuse_unknown()
            if (state := token.state(now)) is not TokenState.ACTIVE:
                raise _refuse_state(state, token)
            if not await blob_ok(dataset):
                raise storage_unavailable()
            try:
                span = ranges.select(
                    request.range,
                    dataset.size_bytes,
                    if_range=request.if_range,
                    sha256=dataset.sha256,
                    modified=dataset.created_at,
                )
            except ranges.Unsatisfiable:
                raise _refuse_range(dataset.size_bytes) from None
            async with self.db.session(write=True) as session:
                remaining = token.max_uses - token.use_count
                if request.method == "HEAD":
                    granted = attempt.row(Outcome.CHECKED, "")
                else:
                    remaining = token.max_uses - await _use(session, token, now)
                    granted = attempt.row(Outcome.GRANTED, "", bytes_granted=span.length)
                session.add(granted)
        except ServiceError as refusal:
            await self._record(attempt.row(Outcome.REFUSED, reason_name(refusal.reason)))
            raise
        except Exception:
            await self._record(attempt.row(Outcome.REFUSED, "INTERNAL"))
            raise
        _log_attempt(granted)
        grant_id = granted.id if granted.outcome == Outcome.GRANTED else ""
        return Grant(dataset, span, remaining, token.expires_at, grant_id)

    async def finish(self, grant_id: str, bytes_sent: int) -> None:
        """Record how many bytes a granted download sent; one that sent none (of a file that
        has some) gives its use back. Conditional on the record not being finished yet, so a
        repeated call changes nothing."""
        async with self.db.session(write=True) as session:
            ended = (
                await session.execute(
                    update(DownloadEventRow)
                    .where(
                        DownloadEventRow.id == grant_id,
                        DownloadEventRow.outcome == Outcome.GRANTED.value,
                        DownloadEventRow.bytes_sent.is_(None),
                        DownloadEventRow.bytes_granted >= bytes_sent,
                    )
                    .values(bytes_sent=bytes_sent)
                    .returning(DownloadEventRow.token_id, DownloadEventRow.bytes_granted)
                )
            ).first()
            if ended is None:
                await _finish_refused(session, grant_id, bytes_sent)
                return  # finished before: repeating it is fine
            token_id, granted = ended
            if bytes_sent == 0 and granted:
                await session.execute(
                    update(DownloadTokenRow)
                    .where(DownloadTokenRow.id == token_id, DownloadTokenRow.use_count > 0)
                    .values(use_count=DownloadTokenRow.use_count - 1)
                )

    async def _find(self, secret: str, digest: str) -> tuple[DownloadToken | None, Dataset | None]:
        if not DOWNLOAD_TOKENS.well_formed(secret):
            return None, None
        async with self.db.session() as session:
            found = (
                await session.execute(
                    select(DownloadTokenRow, DatasetRow)
                    .join(DatasetRow, DatasetRow.id == DownloadTokenRow.dataset_id)
                    .where(DownloadTokenRow.token_hash == digest)
                )
            ).first()
        return (_token(found[0]), _dataset(found[1])) if found else (None, None)

    async def _record(self, row: DownloadEventRow) -> None:
        """Write a refusal to the audit log; a failure here must not hide the refusal."""
        try:
            async with self.db.session(write=True) as session:
                session.add(row)
        except Exception:
            log.exception("could not write a download audit record")
        _log_attempt(row)

    async def list_events(
        self, owner: str, dataset_id: str, size: int, page_token: str
    ) -> Page[DownloadEvent]:
        scope = f"events:{dataset_id}"
        query = newest_first(
            select(DownloadEventRow).where(
                DownloadEventRow.dataset_id == dataset_id, DownloadEventRow.owner == owner
            ),
            DownloadEventRow.occurred_at,
            DownloadEventRow.id,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            await _owned_dataset(session, owner, dataset_id)
            rows = list((await session.scalars(query)).all())
        return page([_event(r) for r in rows], size, scope, lambda e: e.occurred_at)


@dataclass(frozen=True)
class _Attempt:
    """One redemption as the audit log records it, whatever its outcome."""

    request: DownloadRequest
    digest: str
    token: DownloadToken | None
    dataset: Dataset | None
    now: datetime

    def row(
        self, outcome: Outcome, reason: str, bytes_granted: int | None = None
    ) -> DownloadEventRow:
        return DownloadEventRow(
            id=ids.new_id("de"),
            occurred_at=self.now,
            outcome=outcome.value,
            reason=reason,
            token_id=self.token.id if self.token else None,
            token_fingerprint=self.digest[:16],
            dataset_id=self.dataset.id if self.dataset else None,
            owner=self.dataset.owner if self.dataset else None,
            range=self.request.range[:256],
            client_ip=self.request.client_ip[:64],
            user_agent=self.request.user_agent[:512],
            request_id=self.request.request_id[:128],
            bytes_granted=bytes_granted,
        )


async def _use(session: AsyncSession, token: DownloadToken, now: datetime) -> int:
    """Count one use of a token in a single conditional UPDATE, so that of concurrent
    redemptions of a token with one use left exactly one matches the row. The new count."""
    used = await session.scalar(
        update(DownloadTokenRow)
        .where(
            DownloadTokenRow.id == token.id,
            DownloadTokenRow.use_count < DownloadTokenRow.max_uses,
            DownloadTokenRow.revoked_at.is_(None),
            DownloadTokenRow.expires_at > now,
        )
        .values(use_count=DownloadTokenRow.use_count + 1)
        .returning(DownloadTokenRow.use_count)
    )
    if used is None:  # someone else took the last use, or it was revoked meanwhile
        fresh = await session.get(DownloadTokenRow, token.id, populate_existing=True)
        raise _refuse_state(_token(fresh).state(now) if fresh else TokenState.EXPIRED, token)
    return int(used)


async def _finish_refused(session: AsyncSession, grant_id: str, bytes_sent: int) -> None:
    """Why a FinishDownload matched nothing, when it is the caller's mistake."""
    event = await session.get(DownloadEventRow, grant_id)
    if event is None or event.outcome != Outcome.GRANTED.value:
        raise not_found("granted download", grant_id)
    if event.bytes_sent is None and bytes_sent > (event.bytes_granted or 0):
        raise ServiceError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"bytes_sent {bytes_sent} exceeds the {event.bytes_granted} bytes granted",
            errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
            {"field": "bytes_sent"},
        )


def _log_attempt(row: DownloadEventRow) -> None:
    log.info(
        "download attempt",
        extra={
            "outcome": row.outcome,
            "reason": row.reason,
            "token_id": row.token_id,
            "dataset_id": row.dataset_id,
            "token_fingerprint": row.token_fingerprint,
        },
    )


async def _owned_dataset(session: AsyncSession, owner: str, dataset_id: str) -> DatasetRow:
    row = await session.scalar(
        select(DatasetRow).where(DatasetRow.id == dataset_id, DatasetRow.owner == owner)
    )
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


def _refuse_unknown() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        "no such download link: the URL may be cut short, the link may have expired a while "
        "ago (expired links are forgotten), or its dataset was deleted; ask the dataset's owner "
        "for a new one",
        errors_pb2.ERROR_REASON_TOKEN_UNKNOWN,
    )


def _refuse_state(state: TokenState, token: DownloadToken) -> ServiceError:
    if state is TokenState.REVOKED:
        message, reason = (
            "this download link was revoked by the dataset's owner; ask them for a new one",
            errors_pb2.ERROR_REASON_TOKEN_REVOKED,
        )
    elif state is TokenState.EXPIRED:
        message, reason = (
            f"this download link expired at {token.expires_at.isoformat(timespec='seconds')}; "
            "ask the dataset's owner for a new one",
            errors_pb2.ERROR_REASON_TOKEN_EXPIRED,
        )
    else:
        message, reason = (
            f"this download link allowed {token.max_uses} download(s) and they have been used "
            "(a resumed download counts as one); ask the dataset's owner for a new one",
            errors_pb2.ERROR_REASON_TOKEN_USED_UP,
        )
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message, reason)


def _refuse_range(size: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.OUT_OF_RANGE,
        f"the requested range lies outside the file, which has {size} bytes",
        errors_pb2.ERROR_REASON_RANGE_NOT_SATISFIABLE,
        {"size": str(size)},
    )


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        owner=row.owner,
        name=row.name,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        row_count=row.row_count,
        format=Format(row.format),
        format_error_line=row.format_error_line,
        format_error_reason=row.format_error_reason,
        blob_key=row.blob_key,
        created_at=row.created_at,
    )


def _token(row: DownloadTokenRow) -> DownloadToken:
    return DownloadToken(
        id=row.id,
        dataset_id=row.dataset_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        max_uses=row.max_uses,
        use_count=row.use_count,
        revoked_at=row.revoked_at,
    )


def _event(row: DownloadEventRow) -> DownloadEvent:
    return DownloadEvent(
        id=row.id,
        token_id=row.token_id,
        dataset_id=row.dataset_id,
        occurred_at=row.occurred_at,
        outcome=Outcome(row.outcome),
        reason=row.reason,
        range=row.range,
        client_ip=row.client_ip,
        user_agent=row.user_agent,
        request_id=row.request_id,
        bytes_granted=row.bytes_granted,
        bytes_sent=row.bytes_sent,
    )
