"""The deploy service's persistence: every user query scoped to its owner, domain objects out.

Each change to a deployment happens under its row lock (SQLite: the write lock) together with the
events it causes, so the event log and the row never disagree and event sequences have no gaps.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Final

import grpc
from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import ids
from services.common.db import Database
from services.common.errors import ServiceError, not_found
from services.common.pagination import Cursor, Page, newest_first, oldest_first, page
from services.common.reconcile import Owned
from services.deploy import metrics
from services.deploy.models import (
    DeploymentEventRow,
    DeploymentRow,
    LeaseRow,
    MetricRow,
    OutputRetentionRow,
    ProviderKeyRow,
)
from services.deploy.providers.base import GpuRequest
from services.deploy.spec import Spec
from services.deploy.states import LIVE, TERMINAL, State
from tunelab_trainer.common import Hyperparameters


@dataclass(frozen=True)
class RunError:
    code: str
    message: str
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    blob_key: str
    size_bytes: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class Deployment:
    id: str
    owner: str
    request_id: str | None
    spec: Spec
    dataset_sha256: str
    dataset_size: int
    state: State
    job_token_hash: str | None
    # Encrypted with the key-encryption key; never leave the service.
    job_token_ciphertext: str | None
    provider_key_ciphertext: str | None
    pod_id: str | None
    gpu_type: str | None
    hourly_usd: float
    cost_usd: float
    cost_base_usd: float
    progress: dict[str, float]
    system_info: dict[str, str]
    error: RunError | None
    output: Output | None
    event_count: int
    created_at: datetime
    updated_at: datetime
    billing_started_at: datetime | None
    started_at: datetime | None
    last_report_at: datetime | None
    finished_at: datetime | None
    pod_released_at: datetime | None
    # What the provider billed for the pod (None: not yet, or never), and when its billing
    # was last looked at (whatever was found).
    billed_usd: float | None = None
    billed_at: datetime | None = None


@dataclass(frozen=True)
class Event:
    sequence: int
    occurred_at: datetime
    kind: str
    state: State | None
    message: str

    @property
    def id(self) -> str:
        return str(self.sequence)


@dataclass(frozen=True)
class MetricPoint:
    seq: int
    reported_at: datetime
    progress: dict[str, float]

    @property
    def id(self) -> str:
        return str(self.seq)


@dataclass(frozen=True)
class ProviderKey:
    provider: str
    last4: str
    created_at: datetime
    updated_at: datetime


class Unset(enum.Enum):
    """The type of UNSET: a field of a Change that the change leaves as it is."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


@dataclass(slots=True, kw_only=True)
class Change:
    """What a mutation of one deployment does: the fields to set and the events to log.

    Each field is a typed value or UNSET (left as it is); the store maps each to its columns,
    so a misspelt field or a wrong type is a type error, never a value silently lost."""

    state: State | Unset = UNSET
    job_token_hash: str | Unset | None = UNSET
    job_token_ciphertext: str | Unset | None = UNSET
    provider_key_ciphertext: str | Unset | None = UNSET
    pod_id: str | Unset = UNSET
    gpu_type: str | Unset | None = UNSET
    hourly_usd: float | Unset = UNSET
    cost_usd: float | Unset = UNSET
    cost_base_usd: float | Unset = UNSET
    progress: dict[str, float] | Unset = UNSET
    system_info: dict[str, str] | Unset = UNSET
    error: RunError | Unset = UNSET
    output: Output | Unset | None = UNSET
    billing_started_at: datetime | Unset = UNSET
    started_at: datetime | Unset = UNSET
    last_report_at: datetime | Unset = UNSET
    pod_released_at: datetime | Unset = UNSET
    billed_usd: float | Unset = UNSET
    billed_at: datetime | Unset = UNSET
    events: list[tuple[str, State | None, str]] = field(default_factory=list)

    def become(self, current: State, new: State, message: str) -> bool:
        if not current.can_become(new):
            return False
        self.state = new
        self.events.append(("state_changed", new, message))
        return True

    def log(self, kind: str, message: str) -> None:
        self.events.append((kind, None, message))

    def end(self, current: State, state: State, error: RunError) -> None:
        """End the run in `state`, recording why unless it succeeded."""
        self.become(current, state, error.message)
        if state is not State.SUCCEEDED:
            self.error = error
        if current is State.PENDING:  # no pod was ever asked for: no secret is needed more
            self.forget_secrets()

    def forget_secrets(self) -> None:
        """A run whose pod is gone (or was never asked for) needs its secrets no more."""
        self.job_token_ciphertext = None
        self.provider_key_ciphertext = None

    def empty(self) -> bool:
        return not self.events and all(
            getattr(self, f.name) is UNSET for f in fields(self) if f.name != "events"
        )


Mutation = Callable[[Deployment], Change | None]


class DeploymentStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Told the id of every deployment a mutation changed (wakes its watchers).
        self.on_change: Callable[[str], None] = lambda deployment_id: None

    # Deployments ------------------------------------------------------------------------------

    async def create(
        self,
        *,
        owner: str,
        request_id: str | None,
        spec: Spec,
        dataset_sha256: str,
        dataset_size: int,
        hourly_usd: float,
        now: datetime,
    ) -> Deployment:
        row = DeploymentRow(
            id=ids.new_id("dep"),
            owner=owner,
            request_id=request_id,
            spec_digest=spec.digest(),
            provider=spec.provider,
            dataset_id=spec.dataset_id,
            dataset_sha256=dataset_sha256,
            dataset_size=dataset_size,
            method=spec.method,
            base_model=spec.base_model,
            hyperparameters=json.dumps(asdict(spec.hyperparameters)),
            gpu=json.dumps(asdict(spec.gpu)),
            image=spec.image,
            max_runtime_minutes=spec.max_runtime_minutes,
            max_cost_usd=spec.max_cost_usd,
            heartbeat_timeout_minutes=spec.heartbeat_timeout_minutes,
            state=State.PENDING.value,
            hourly_usd=hourly_usd,
            cost_usd=0.0,
            cost_base_usd=0.0,
            progress="{}",
            system_info="{}",
            event_count=1,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session(write=True) as session:
            session.add(row)
            await session.flush()
            session.add(
                DeploymentEventRow(
                    deployment_id=row.id,
                    sequence=1,
                    occurred_at=now,
                    kind="state_changed",
                    state=State.PENDING.value,
                    message="deployment accepted; pre-flight checks passed",
                )
            )
        return _deployment(row)

    async def find_request(self, owner: str, request_id: str) -> tuple[Deployment, str] | None:
        """The deployment an earlier request with this idempotency key made, and its digest."""
        async with self.db.session() as session:
            row = await session.scalar(
                select(DeploymentRow).where(
                    DeploymentRow.owner == owner, DeploymentRow.request_id == request_id
                )
            )
        return (_deployment(row), row.spec_digest) if row else None

    async def get(self, owner: str, deployment_id: str) -> Deployment:
        async with self.db.session() as session:
            return _deployment(await _owned(session, owner, deployment_id))

    async def get_any(self, deployment_id: str) -> Deployment | None:
        """For the supervisor and the job-token route, which act for no user."""
        async with self.db.session() as session:
            row = await session.get(DeploymentRow, deployment_id)
        return _deployment(row) if row else None

    async def list_owned(
        self, owner: str, size: int, page_token: str, state: State | None
    ) -> Page[Deployment]:
        scope = f"deployments:{owner}:{state or ''}"
        query = select(DeploymentRow).where(DeploymentRow.owner == owner)
        if state is not None:
            query = query.where(DeploymentRow.state == state.value)
        query = newest_first(
            query,
            DeploymentRow.created_at,
            DeploymentRow.id,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            rows = list((await session.scalars(query)).all())
        return page([_deployment(r) for r in rows], size, scope, lambda d: d.created_at)

    async def supervised(self) -> list[Deployment]:
        """Every deployment the supervisor must look after: the live ones, the finished ones
        whose pod is not confirmed gone yet, and finished ones that still hold secrets (a pod
        may have been asked for and never recorded: it is looked for by name first)."""
        query = select(DeploymentRow).where(
            or_(
                DeploymentRow.state.in_([s.value for s in LIVE]),
                DeploymentRow.pod_released_at.is_(None) & DeploymentRow.pod_id.is_not(None),
                DeploymentRow.provider_key_ciphertext.is_not(None),
                DeploymentRow.job_token_ciphertext.is_not(None),
            )
        )
        async with self.db.session() as session:
            return [_deployment(r) for r in (await session.scalars(query)).all()]

    async def to_bill(
        self, provider: str, released_after: datetime, checked_before: datetime
    ) -> list[Deployment]:
        """Runs of `provider` whose pod was released after `released_after` and whose bill
        was not read since `checked_before`: providers settle bills late, so it is read again."""
        query = select(DeploymentRow).where(
            DeploymentRow.provider == provider,
            DeploymentRow.pod_released_at > released_after,
            or_(DeploymentRow.billed_at.is_(None), DeploymentRow.billed_at < checked_before),
        )
        async with self.db.session() as session:
            return [_deployment(r) for r in (await session.scalars(query)).all()]

    # Outputs' storage ---------------------------------------------------------------------

    async def outputs_after(self, after: str, limit: int) -> list[Owned]:
        """Outputs' blob keys after `after`, in key order (for reconciliation)."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(
                    DeploymentRow.output_blob_key,
                    DeploymentRow.id,
                    DeploymentRow.output_at,
                    DeploymentRow.updated_at,
                )
                .where(DeploymentRow.output_blob_key > after)
                .order_by(DeploymentRow.output_blob_key)
                .limit(limit)
            )
            # Every row is kept (a page short of `limit` ends the walk); the key is never NULL
            # past the `>` and output_at is set with it (updated_at stands in, as _output does).
            return [
                Owned(str(key), f"deployment {ident}", output_at or updated_at)
                for key, ident, output_at, updated_at in rows
            ]

    async def output_keys_in_use(self, keys: list[str]) -> set[str]:
        async with self.db.session() as session:
            found = await session.scalars(
                select(DeploymentRow.output_blob_key).where(DeploymentRow.output_blob_key.in_(keys))
            )
            return {key for key in found if key is not None}

    async def expired_outputs(
        self, now: datetime, default_days: float, limit: int
    ) -> list[Deployment]:
        """Finished runs whose output is older than its owner's retention (their own choice,
        else `default_days`; 0 keeps it), oldest first, at most `limit`."""
        expired: list[Deployment] = []
        async with self.db.session() as session:
            chosen = list((await session.scalars(select(OutputRetentionRow))).all())
            groups: list[tuple[ColumnElement[bool], float]] = [
                (DeploymentRow.owner == row.owner, row.days) for row in chosen if row.days > 0
            ]
            if default_days > 0:
                others = DeploymentRow.owner.not_in(select(OutputRetentionRow.owner))
                groups.append((others, default_days))
            for who, days in groups:
                query = (
                    select(DeploymentRow)
                    .where(
                        who,
                        DeploymentRow.output_at < now - timedelta(days=days),
                        DeploymentRow.state.in_([s.value for s in TERMINAL]),
                    )
                    .order_by(DeploymentRow.output_at)
                    .limit(limit - len(expired))
                )
                expired += [_deployment(r) for r in (await session.scalars(query)).all()]
                if len(expired) >= limit:
                    break
        return expired

    async def output_retention(self, owner: str) -> int | None:
        """The owner's chosen retention in days (0: kept until deleted), None if unset."""
        async with self.db.session() as session:
            row = await session.get(OutputRetentionRow, owner)
            return row.days if row else None

    async def set_output_retention(self, owner: str, days: int | None, now: datetime) -> None:
        """Choose a retention (None: back to the operator's default)."""
        async with self.db.session(write=True) as session:
            row = await session.get(OutputRetentionRow, owner)
            if days is None:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(OutputRetentionRow(owner=owner, days=days, updated_at=now))
            else:
                row.days, row.updated_at = days, now

    async def known_ids(self, deployment_ids: Sequence[str]) -> dict[str, Deployment]:
        if not deployment_ids:
            return {}
        async with self.db.session() as session:
            rows = await session.scalars(
                select(DeploymentRow).where(DeploymentRow.id.in_(list(deployment_ids)))
            )
            return {row.id: _deployment(row) for row in rows}

    async def mutate(
        self, deployment_id: str, now: datetime, mutation: Mutation
    ) -> tuple[Deployment, bool]:
        """Apply `mutation` to the deployment as it is now, under its lock: it returns the
        change to make, or None for none. Returns the deployment after, and whether it changed."""
        async with self.db.session(write=True) as session:
            ended: tuple[str, str, str] | None = None
            row = await session.scalar(
                select(DeploymentRow).where(DeploymentRow.id == deployment_id).with_for_update()
            )
            if row is None:
                raise not_found("deployment", deployment_id)
            change = mutation(_deployment(row))
            if change is None or change.empty():
                return _deployment(row), False
            _apply(change, row)
            if change.state is not UNSET and change.state.terminal:
                row.finished_at = row.finished_at or now
                ended = (row.provider, row.state, row.error_code or "")
            row.updated_at = now
            for kind, state, message in change.events:
                row.event_count += 1
                session.add(
                    DeploymentEventRow(
                        deployment_id=row.id,
                        sequence=row.event_count,
                        occurred_at=now,
                        kind=kind,
                        state=state.value if state else None,
                        message=message[:2000],
                    )
                )
            after = _deployment(row)
        if ended is not None:
            metrics.RUNS_ENDED.labels(*ended).inc()
        self.on_change(deployment_id)
        return after, True

    # Events and metrics ----------------------------------------------------------------------

    async def events(
        self, owner: str, deployment_id: str, size: int, page_token: str
    ) -> Page[Event]:
        scope = f"events:{deployment_id}"
        query = oldest_first(
            select(DeploymentEventRow).where(DeploymentEventRow.deployment_id == deployment_id),
            DeploymentEventRow.sequence,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            await _owned(session, owner, deployment_id)
            rows = (await session.scalars(query)).all()
        return page([_event(r) for r in rows], size, scope, lambda e: e.occurred_at)

    async def events_after(self, deployment_id: str, sequence: int) -> list[Event]:
        query = (
            select(DeploymentEventRow)
            .where(
                DeploymentEventRow.deployment_id == deployment_id,
                DeploymentEventRow.sequence > sequence,
            )
            .order_by(DeploymentEventRow.sequence)
            .limit(1000)
        )
        async with self.db.session() as session:
            return [_event(r) for r in (await session.scalars(query)).all()]

    async def add_metric(
        self, deployment_id: str, progress: dict[str, float], now: datetime
    ) -> None:
        async with self.db.session(write=True) as session:
            session.add(
                MetricRow(
                    deployment_id=deployment_id, reported_at=now, progress=json.dumps(progress)
                )
            )

    async def metrics(
        self, owner: str, deployment_id: str, size: int, page_token: str
    ) -> Page[MetricPoint]:
        scope = f"metrics:{deployment_id}"
        query = oldest_first(
            select(MetricRow).where(MetricRow.deployment_id == deployment_id),
            MetricRow.id,
            Cursor.decode(page_token, scope),
            size,
        )
        async with self.db.session() as session:
            await _owned(session, owner, deployment_id)
            rows = (await session.scalars(query)).all()
        points = [MetricPoint(r.id, r.reported_at, json.loads(r.progress)) for r in rows]
        return page(points, size, scope, lambda p: p.reported_at)

    # Provider keys ---------------------------------------------------------------------------

    async def set_key(
        self, owner: str, provider: str, ciphertext: str, last4: str, now: datetime
    ) -> None:
        async with self.db.session(write=True) as session:
            row = await session.get(ProviderKeyRow, (owner, provider), with_for_update=True)
            if row is None:
                session.add(
                    ProviderKeyRow(
                        owner=owner,
                        provider=provider,
                        ciphertext=ciphertext,
                        last4=last4,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                row.ciphertext, row.last4, row.updated_at = ciphertext, last4, now

    async def keys(self, owner: str) -> list[ProviderKey]:
        async with self.db.session() as session:
            rows = await session.scalars(
                select(ProviderKeyRow)
                .where(ProviderKeyRow.owner == owner)
                .order_by(ProviderKeyRow.provider)
            )
            return [ProviderKey(r.provider, r.last4, r.created_at, r.updated_at) for r in rows]

    async def key_ciphertext(self, owner: str, provider: str) -> str | None:
        async with self.db.session() as session:
            row = await session.get(ProviderKeyRow, (owner, provider))
        return row.ciphertext if row else None

    async def delete_key(self, owner: str, provider: str) -> bool:
        async with self.db.session(write=True) as session:
            result = await session.execute(
                delete(ProviderKeyRow).where(
                    ProviderKeyRow.owner == owner, ProviderKeyRow.provider == provider
                )
            )
        return bool(getattr(result, "rowcount", 0))

    async def all_keys(self, provider: str) -> list[tuple[str, str]]:
        """(owner, ciphertext) of every stored key for the provider: for the orphan sweep."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(ProviderKeyRow.owner, ProviderKeyRow.ciphertext).where(
                    ProviderKeyRow.provider == provider
                )
            )
            return [(owner, ciphertext) for owner, ciphertext in rows]

    async def _rotate_deployment_secrets(self, rotate: Callable[[str], str]) -> None:
        query = select(DeploymentRow).where(
            DeploymentRow.job_token_ciphertext.is_not(None)
            | DeploymentRow.provider_key_ciphertext.is_not(None)
        )
        async with self.db.session(write=True) as session:
            for row in await session.scalars(query.with_for_update()):
                if row.job_token_ciphertext:
                    row.job_token_ciphertext = rotate(row.job_token_ciphertext)
                if row.provider_key_ciphertext:
                    row.provider_key_ciphertext = rotate(row.provider_key_ciphertext)

    async def hold_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take or renew the lease `name` for `holder`; False while another holder has it."""
        try:
            async with self.db.session(write=True) as session:
                row = await session.get(LeaseRow, name, with_for_update=True)
                if row is None:
                    session.add(LeaseRow(name=name, holder=holder, expires_at=now + ttl))
                    return True
                if row.holder != holder and row.expires_at > now:
                    return False
                row.holder, row.expires_at = holder, now + ttl
                return True
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.ABORTED:  # another replica inserted it first
                return False
            raise

    async def rotate_keys(self, rotate: Callable[[str], str], now: datetime) -> int:
        """Re-encrypt every stored key (and the copies live runs hold), a batch at a time;
        returns how many keys."""
        await self._rotate_deployment_secrets(rotate)
        done = 0
        last: tuple[str, str] = ("", "")
        while True:
            async with self.db.session(write=True) as session:
                rows = list(
                    await session.scalars(
                        select(ProviderKeyRow)
                        .where(
                            (ProviderKeyRow.owner > last[0])
                            | (
                                (ProviderKeyRow.owner == last[0])
                                & (ProviderKeyRow.provider > last[1])
                            )
                        )
                        .order_by(ProviderKeyRow.owner, ProviderKeyRow.provider)
                        .limit(500)
                        .with_for_update()
                    )
                )
                for row in rows:
                    row.ciphertext = rotate(row.ciphertext)
                    row.updated_at = now
            if not rows:
                return done
            done += len(rows)
            last = (rows[-1].owner, rows[-1].provider)


async def _owned(session: AsyncSession, owner: str, deployment_id: str) -> DeploymentRow:
    row = await session.get(DeploymentRow, deployment_id)
    if row is None or row.owner != owner:
        raise not_found("deployment", deployment_id)
    return row


def _deployment(row: DeploymentRow) -> Deployment:
    gpu = json.loads(row.gpu)
    gpu["fallback_types"] = tuple(gpu.get("fallback_types", ()))
    spec = Spec(
        provider=row.provider,
        dataset_id=row.dataset_id,
        method=row.method,
        base_model=row.base_model,
        hyperparameters=Hyperparameters(**json.loads(row.hyperparameters)),
        gpu=GpuRequest(**gpu),
        max_runtime_minutes=row.max_runtime_minutes,
        max_cost_usd=row.max_cost_usd,
        heartbeat_timeout_minutes=row.heartbeat_timeout_minutes,
        image=row.image,
    )
    error = None
    if row.error_code:
        error = RunError(
            row.error_code,
            row.error_message or "",
            row.error_exit_code,
            tuple(json.loads(row.error_log_tail or "[]")),
        )
    return Deployment(
        id=row.id,
        owner=row.owner,
        request_id=row.request_id,
        spec=spec,
        dataset_sha256=row.dataset_sha256,
        dataset_size=row.dataset_size,
        state=State(row.state),
        job_token_hash=row.job_token_hash,
        job_token_ciphertext=row.job_token_ciphertext,
        provider_key_ciphertext=row.provider_key_ciphertext,
        pod_id=row.pod_id,
        gpu_type=row.gpu_type,
        hourly_usd=row.hourly_usd,
        cost_usd=row.cost_usd,
        cost_base_usd=row.cost_base_usd,
        progress=json.loads(row.progress),
        system_info=json.loads(row.system_info),
        error=error,
        output=_output(row),
        event_count=row.event_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        billing_started_at=row.billing_started_at,
        started_at=row.started_at,
        last_report_at=row.last_report_at,
        finished_at=row.finished_at,
        pod_released_at=row.pod_released_at,
        billed_usd=row.billed_usd,
        billed_at=row.billed_at,
    )


def _output(row: DeploymentRow) -> Output | None:
    if row.output_blob_key is None:
        return None
    # The four columns are written together (_apply).
    return Output(
        row.output_blob_key,
        row.output_size or 0,
        row.output_sha256 or "",
        row.output_at or row.updated_at,
    )


def _event(row: DeploymentEventRow) -> Event:
    return Event(
        row.sequence,
        row.occurred_at,
        row.kind,
        State(row.state) if row.state else None,
        row.message,
    )


def _apply(change: Change, row: DeploymentRow) -> None:
    """Set the columns of each field the change sets: every field of Change is mapped here."""
    if change.state is not UNSET:
        row.state = change.state.value
    if change.job_token_hash is not UNSET:
        row.job_token_hash = change.job_token_hash
    if change.job_token_ciphertext is not UNSET:
        row.job_token_ciphertext = change.job_token_ciphertext
    if change.provider_key_ciphertext is not UNSET:
        row.provider_key_ciphertext = change.provider_key_ciphertext
    if change.pod_id is not UNSET:
        row.pod_id = change.pod_id
    if change.gpu_type is not UNSET:
        row.gpu_type = change.gpu_type
    if change.hourly_usd is not UNSET:
        row.hourly_usd = change.hourly_usd
    if change.cost_usd is not UNSET:
        row.cost_usd = change.cost_usd
    if change.cost_base_usd is not UNSET:
        row.cost_base_usd = change.cost_base_usd
    if change.progress is not UNSET:
        row.progress = json.dumps(change.progress)
    if change.system_info is not UNSET:
        row.system_info = json.dumps(change.system_info)
    if change.error is not UNSET:
        row.error_code = change.error.code
        row.error_message = change.error.message
        row.error_exit_code = change.error.exit_code
        row.error_log_tail = json.dumps(list(change.error.log_tail))
    if change.output is not UNSET:
        output = change.output
        row.output_blob_key = output.blob_key if output else None
        row.output_size = output.size_bytes if output else None
        row.output_sha256 = output.sha256 if output else None
        row.output_at = output.created_at if output else None
    if change.billing_started_at is not UNSET:
        row.billing_started_at = change.billing_started_at
    if change.started_at is not UNSET:
        row.started_at = change.started_at
    if change.last_report_at is not UNSET:
        row.last_report_at = change.last_report_at
    if change.pod_released_at is not UNSET:
        row.pod_released_at = change.pod_released_at
    if change.billed_usd is not UNSET:
        row.billed_usd = change.billed_usd
    if change.billed_at is not UNSET:
        row.billed_at = change.billed_at
