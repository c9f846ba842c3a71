"""The supervisor: launches pending runs, watches live pods, enforces the limits, terminates
every pod whose run is over, and sweeps up pods named as ours that no run owns.

Everything it knows is in the database, so a restarted supervisor carries on where the last one
stopped: a pod asked for but not recorded is found again by its name (providers' create is
idempotent by name) and adopted, with the job token it was given (kept encrypted until the pod
is gone); a finished run whose pod is not confirmed gone is terminated again. One replica's
supervisor acts at a time (a lease in the database), so two never launch the same run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import asdict
from datetime import datetime, timedelta

import grpc

from services.common import bearer
from services.deploy import metrics
from services.deploy.datasets import DatasetsClient, DownloadLink, describe
from services.deploy.keys import KeyRingError
from services.deploy.pod import render
from services.deploy.providers.base import (
    Pod,
    PodSpec,
    PodStatus,
    Provider,
    ProviderError,
    ProviderErrorKind,
)
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.states import State, Stop
from services.deploy.store import Change, Deployment, DeploymentStore, RunError

log = logging.getLogger(__name__)

JOB_TOKENS = bearer.BearerTokens("tljb_")
DOWNLOAD_TTL_SECONDS = 2 * 60 * 60
LEASE = "supervisor"
# Steps of different runs go on side by side (a slow provider must not hold up the others).
CONCURRENT_STEPS = 16
# Worth retrying until the provisioning deadline: capacity comes and goes, rate limits reset.
_TRANSIENT = {
    ProviderErrorKind.NO_CAPACITY,
    ProviderErrorKind.QUOTA,
    ProviderErrorKind.UNAVAILABLE,
}
Clock = Callable[[], datetime]


def pod_name(settings: DeploySettings, deployment_id: str) -> str:
    return f"{settings.pod_name_prefix}-{deployment_id}"


class Supervisor:
    def __init__(
        self,
        store: DeploymentStore,
        providers: Providers,
        datasets: DatasetsClient,
        settings: DeploySettings,
        trainers: dict[str, render.Trainer],
        clock: Clock,
    ) -> None:
        self.store = store
        self.providers = providers
        self.datasets = datasets
        self.settings = settings
        self.trainers = trainers
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._last_sweep: datetime | None = None
        self._last_tick: datetime | None = None
        self._gap = timedelta(seconds=settings.supervise_interval_seconds)
        self._noted: dict[str, str] = {}  # the last provider error logged, per deployment
        self._ours = re.compile(rf"{re.escape(settings.pod_name_prefix)}-(dep_[a-z2-7]{{26}})")

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one failure
                log.exception("supervisor pass failed; will retry")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.supervise_interval_seconds)
            self._wake.clear()

    async def tick(self) -> None:
        now = self.clock()
        interval = timedelta(seconds=self.settings.supervise_interval_seconds)
        if not await self._leader():
            self._last_tick = None  # passes resume from scratch when the lease comes back
            return
        # The cost limit looks one pass ahead: as far ahead as passes really are apart (at
        # most a lease's length: a longer gap was an outage, not the pace).
        if self._last_tick is not None:
            self._gap = min(max(interval, now - self._last_tick), 3 * interval)
        self._last_tick = now
        limit = asyncio.Semaphore(CONCURRENT_STEPS)

        async def guarded(d: Deployment) -> None:
            async with limit:
                try:
                    await self.step(d)
                except Exception:
                    log.exception("supervising a deployment failed", extra={"deployment": d.id})

        await asyncio.gather(*(guarded(d) for d in await self.store.supervised()))
        sweep_every = timedelta(seconds=self.settings.orphan_sweep_interval_seconds)
        due = self._last_sweep is None or now - self._last_sweep >= sweep_every
        if due and await self._leader():  # a long pass may have lost the lease
            self._last_sweep = now
            await self.sweep()

    async def _leader(self) -> bool:
        """Take or renew the lease; False while another replica holds it."""
        ttl = timedelta(seconds=3 * self.settings.supervise_interval_seconds)
        return await self.store.hold_lease(LEASE, self.holder, self.clock(), ttl)

    async def step(self, d: Deployment) -> None:
        if d.state.terminal:
            if d.pod_id and not d.pod_released_at:
                await self.release(d)
            elif not d.pod_id:
                await self._settle_unrecorded(d)
            else:
                await self._forget(d, "")
        elif not d.pod_id:
            await self.launch(d)
        else:
            await self.watch(d)

    # Launching --------------------------------------------------------------------------------

    async def launch(self, d: Deployment) -> None:
        if not await self._leader():
            return
        name = pod_name(self.settings, d.id)
        link: DownloadLink | None = None
        try:
            if d.state is not State.PENDING:
                # Asked for before (then a restart, or an answer lost): adopt, never rent twice.
                async with self._provider(d) as provider:
                    found = [p for p in await provider.list_pods(name) if p.name == name]
                if found:
                    await self._rented(d, found[0], adopted=True)
                    return
                if d.state is not State.PROVISIONING:
                    # It reported from a pod we never recorded, and that pod is gone: renting
                    # another would start the run over, at a price nobody agreed to.
                    await self._fail(d, RunError(Stop.POD_VANISHED, "the pod is gone"))
                    return
            spec, link, d = await self._pod_spec(d, name)
            if spec is None:
                return
            async with self._provider(d) as provider:
                pod = await provider.create(spec)
        except ProviderError as exc:
            if link is not None:  # no pod got it: it must not pile up in the owner's list
                await self.datasets.revoke(d.owner, d.spec.dataset_id, link.token_id)
            await self._provider_refused(d, exc)
            return
        await self._rented(d, pod, adopted=False)

    def _provider(self, d: Deployment) -> AbstractAsyncContextManager[Provider]:
        """The provider with the key the run's pod is (or will be) rented with."""
        return self.providers.open(d.owner, d.spec.provider, d.provider_key_ciphertext)

    async def _pod_spec(
        self, d: Deployment, name: str
    ) -> tuple[PodSpec | None, DownloadLink | None, Deployment]:
        """Mint (once) the pod's credentials, record the request, and build what the provider
        runs; no spec when the run cannot start (it is failed) or must wait."""
        try:
            link = await self.datasets.download_link(
                d.owner,
                d.spec.dataset_id,
                ttl_seconds=DOWNLOAD_TTL_SECONDS,
                max_uses=self.settings.download_token_uses,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                await self._fail(d, RunError(Stop.DATASET_UNAVAILABLE, describe(exc)))
            elif self.clock() - d.created_at >= self._provision_deadline(d):
                message = f"the datasets service could not be reached ({describe(exc)})"
                await self._fail(d, RunError(Stop.DATASET_UNAVAILABLE, message))
            else:
                log.warning(
                    "datasets service unavailable; launch retried", extra={"error": describe(exc)}
                )
            return None, None, d
        keyring = self.providers.keyring
        try:
            secret = (
                keyring.decrypt(d.job_token_ciphertext)
                if d.job_token_ciphertext
                else JOB_TOKENS.new_secret()
            )
        except KeyRingError as exc:
            await self.datasets.revoke(d.owner, d.spec.dataset_id, link.token_id)
            await self._fail(d, RunError(Stop.PROVIDER_REFUSED, str(exc)))
            return None, None, d
        key = d.provider_key_ciphertext or await self.providers.key_ciphertext(
            d.owner, d.spec.provider
        )
        now = self.clock()

        def request(current: Deployment) -> Change | None:
            if current.state.terminal or current.pod_id:
                return None  # cancelled meanwhile
            change = Change(
                job_token_hash=bearer.digest(secret),
                job_token_ciphertext=keyring.encrypt(secret),
                provider_key_ciphertext=key,
            )
            if current.state is State.PENDING:
                change.become(
                    current.state, State.PROVISIONING, f"asking {d.spec.provider} for a pod"
                )
            return change

        d, changed = await self.store.mutate(d.id, now, request)
        if not changed:
            await self.datasets.revoke(d.owner, d.spec.dataset_id, link.token_id)
            return None, None, d
        config = {
            "deployment_id": d.id,
            "method": d.spec.method,
            "base_model": d.spec.base_model,
            "hyperparameters": asdict(d.spec.hyperparameters),
        }
        script = render.render(
            render.Bootstrap(
                deployment_id=d.id,
                api_url=self.settings.public_url,
                dataset_sha256=d.dataset_sha256,
                dataset_size=d.dataset_size,
                config=config,
                trainer=self.trainers[d.spec.provider],
                heartbeat_seconds=self.settings.heartbeat_seconds,
                download_attempts=max(1, self.settings.download_token_uses - 1),
            )
        )
        env = {
            render.PACKED_ENV: render.pack(script),
            "TUNELAB_JOB_TOKEN": secret,
            "TUNELAB_DATASET_URL": link.url,
            "TUNELAB_DEPLOYMENT_ID": d.id,
        }
        if d.spec.provider != "local" and (hf := await self.providers.hugging_face_token(d.owner)):
            env["HF_TOKEN"] = hf
        spec = PodSpec(
            name=name,
            image=d.spec.image,
            gpu=d.spec.gpu,
            command=render.launch_command(),
            env=env,
            disk_gb=self.settings.runpod_disk_gb,
        )
        return spec, link, d

    async def _rented(self, d: Deployment, pod: Pod, *, adopted: bool) -> None:
        now = self.clock()
        duplicate = False

        def record(current: Deployment) -> Change | None:
            nonlocal duplicate
            if current.pod_id and current.pod_id != pod.id:
                duplicate = True
                return None
            if current.pod_id == pod.id:
                return None
            # An adopted pod was rented at some time since the run was accepted: count from
            # then, so that the cost limit errs on the side of stopping early.
            started = current.created_at if adopted else now
            change = Change(
                pod_id=pod.id,
                gpu_type=pod.gpu_type or current.gpu_type,
                # The catalogue price the pre-flight saw, when the provider's answer has none.
                hourly_usd=pod.hourly_usd or current.hourly_usd,
                billing_started_at=current.billing_started_at or started,
            )
            where = (
                f" ({pod.gpu_count} x {pod.gpu_type}{', spot' if pod.spot else ''})"
                if pod.gpu_type
                else ""
            )
            hourly = pod.hourly_usd or current.hourly_usd
            price = f" at ${hourly:.2f}/h" if hourly else ""
            note = "; found again after a restart" if adopted else ""
            change.log("pod_rented", f"pod {pod.id}{where}{price}{note}")
            if current.state is State.PENDING:
                change.become(current.state, State.PROVISIONING, "pod asked for")
            return change

        d, changed = await self.store.mutate(d.id, now, record)
        self._noted.pop(d.id, None)
        if duplicate:
            log.warning("a second pod for one run; terminating it", extra={"pod": pod.id})
            async with self._provider(d) as provider:
                await provider.terminate(pod.id)
            return
        if changed:
            metrics.PODS_RENTED.labels(d.spec.provider).inc()
        if d.state.terminal:  # cancelled while the pod was being rented
            await self.release(d)

    def _provision_deadline(self, d: Deployment) -> timedelta:
        return min(
            timedelta(minutes=self.settings.provision_timeout_minutes),
            timedelta(minutes=d.spec.max_runtime_minutes),
        )

    async def _provider_refused(self, d: Deployment, exc: ProviderError) -> None:
        now = self.clock()
        deadline = self._provision_deadline(d)
        if exc.kind not in _TRANSIENT:
            await self._fail(d, RunError(Stop.PROVIDER_REFUSED, exc.message))
        elif now - d.created_at >= deadline:
            minutes = deadline.total_seconds() / 60
            await self._fail(
                d,
                RunError(Stop.PROVIDER_REFUSED, f"no pod after {minutes:g} minutes: {exc.message}"),
            )
        elif self._noted.get(d.id) != exc.message:  # log each new reason once, not every pass
            self._noted[d.id] = exc.message

            def note(current: Deployment) -> Change:
                change = Change()
                change.log("provider_error", f"{exc.message}; retrying")
                return change

            await self.store.mutate(d.id, now, note)

    # Watching ---------------------------------------------------------------------------------

    async def watch(self, d: Deployment) -> None:
        assert d.pod_id is not None
        try:
            async with self._provider(d) as provider:
                pod = await provider.get(d.pod_id)
        except ProviderError as exc:
            log.warning("could not read the pod", extra={"deployment": d.id, "error": exc.message})
            pod = _UNKNOWN
        now = self.clock()

        def update(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            cost = _cost(current, now)
            change = Change(cost_usd=cost)
            seen = pod if pod is not _UNKNOWN else None
            if seen and seen.hourly_usd and seen.hourly_usd != current.hourly_usd:
                # The price the provider bills from now on (a spot price moves): what has
                # accrued so far stays at the old one.
                change.hourly_usd = seen.hourly_usd
                change.billing_started_at = now
                change.cost_base_usd = cost
            if seen and seen.status is PodStatus.RUNNING:
                if current.started_at is None:
                    change.started_at = now
                if current.state is State.PROVISIONING:
                    change.become(current.state, State.STARTING, "the pod is running")
            if seen and _finished_quietly(current, seen):
                # Its final report was lost, but the pod exited cleanly after sending its output.
                message = "the pod exited with status 0 after sending its output"
                _end(change, current, State.SUCCEEDED, RunError("", message))
            elif verdict := self._verdict(current, pod, now):
                _end(change, current, State.FAILED, verdict)
            return change

        d, _ = await self.store.mutate(d.id, now, update)
        if d.state.terminal:
            await self.release(d)

    def _verdict(self, d: Deployment, pod: Pod | None, now: datetime) -> RunError | None:
        """Why the run must end now, or None."""
        if pod is None or (pod is not _UNKNOWN and pod.status is PodStatus.TERMINATED):
            return RunError(Stop.POD_VANISHED, "the provider no longer has the pod")
        if pod.status is PodStatus.FAILED:
            return RunError(Stop.POD_FAILED, pod.message or "the provider reports the pod failed")
        if pod.status is PodStatus.EXITED:
            stage = Stop.TRAINER_FAILED if d.state is State.TRAINING else Stop.BOOTSTRAP_FAILED
            code = f" with status {pod.exit_code}" if pod.exit_code is not None else ""
            return RunError(
                stage, f"the pod exited{code} without reporting the end of the run", pod.exit_code
            )
        if now - d.created_at >= timedelta(minutes=d.spec.max_runtime_minutes):
            return RunError(
                Stop.MAX_RUNTIME, f"max_runtime_minutes ({d.spec.max_runtime_minutes}) reached"
            )
        # Stop before the next pass would cross the cost limit, not after.
        ahead = d.hourly_usd * self._gap.total_seconds() / 3600
        if _cost(d, now) + ahead >= d.spec.max_cost_usd:
            return RunError(Stop.MAX_COST, f"max_cost_usd ({d.spec.max_cost_usd:g}) reached")
        heard = d.last_report_at or d.started_at
        if heard and now - heard >= timedelta(minutes=d.spec.heartbeat_timeout_minutes):
            return RunError(
                Stop.HEARTBEAT_TIMEOUT,
                f"no report from the pod for {d.spec.heartbeat_timeout_minutes} minutes",
            )
        return None

    # Ending -----------------------------------------------------------------------------------

    async def cancel(self, d: Deployment) -> Deployment:
        def cancel(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            change = Change()
            _end(
                change, current, State.CANCELLED, RunError(Stop.CANCELLED, "cancelled by its owner")
            )
            return change

        d, changed = await self.store.mutate(d.id, self.clock(), cancel)
        if changed and d.pod_id:
            await self.release(d)
            d = await self.store.get(d.owner, d.id)
        return d

    async def release(self, d: Deployment) -> None:
        """Terminate the pod of a finished run; retried on the next pass until it is gone."""
        assert d.pod_id is not None
        try:
            async with self._provider(d) as provider:
                await provider.terminate(d.pod_id)
        except ProviderError as exc:
            log.warning("pod not terminated yet", extra={"deployment": d.id, "error": exc.message})
            return
        now = self.clock()

        def released(current: Deployment) -> Change | None:
            if current.pod_released_at is not None:
                return None
            change = Change(pod_released_at=now, cost_usd=_cost(current, now))
            change.forget_secrets()
            change.log("pod_terminated", f"pod {current.pod_id} terminated")
            return change

        _, changed = await self.store.mutate(d.id, now, released)
        if changed:
            metrics.PODS_TERMINATED.labels(d.spec.provider).inc()

    async def _settle_unrecorded(self, d: Deployment) -> None:
        """A run that ended with no pod recorded may still have one (asked for, then the answer
        lost, or cancelled meanwhile): look for it by name, terminate it, then forget the
        run's secrets."""
        name = pod_name(self.settings, d.id)
        try:
            async with self._provider(d) as provider:
                found = [p for p in await provider.list_pods(name) if p.name == name]
                for pod in found:
                    await provider.terminate(pod.id)
        except ProviderError as exc:
            if exc.kind is not ProviderErrorKind.UNAUTHENTICATED:
                log.warning("could not look for the pod yet", extra={"deployment": d.id})
                return
            found = []  # the key is refused: nothing can be looked at or done with it
        note = f"terminated pod {', '.join(p.id for p in found)}, asked for before the run ended"
        await self._forget(d, note if found else "")

    async def _forget(self, d: Deployment, note: str) -> None:
        def forget(current: Deployment) -> Change:
            change = Change()
            change.forget_secrets()
            if note:
                change.log("pod_terminated", note)
            return change

        await self.store.mutate(d.id, self.clock(), forget)

    async def _fail(self, d: Deployment, error: RunError) -> None:
        def fail(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            change = Change()
            _end(change, current, State.FAILED, error)
            return change

        await self.store.mutate(d.id, self.clock(), fail)
        self._noted.pop(d.id, None)

    # The orphan sweep -------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Terminate pods named as ours that no run owns: a duplicate, the pod of a finished
        run, or one whose run this database never recorded. Pods are matched to runs by pod
        id, whoever's key listed them, so accounts shared by several users are safe."""
        terminated = 0
        async for _, provider in self.providers.accounts():
            try:
                pods = await provider.list_pods(f"{self.settings.pod_name_prefix}-dep_")
            except (ProviderError, KeyRingError) as exc:
                log.warning("orphan sweep could not list pods", extra={"error": str(exc)})
                continue
            ours = {pod.id: match[1] for pod in pods if (match := self._ours.fullmatch(pod.name))}
            known = await self.store.known_ids(list(set(ours.values())))
            for pod in pods:
                if pod.id not in ours:
                    continue  # named like ours, but not one of our names
                d = known.get(ours[pod.id])
                if d is not None and _owns(d, pod):
                    continue
                terminated += await self._terminate_orphan(provider, pod, d)
        return terminated

    async def _terminate_orphan(self, provider: Provider, pod: Pod, d: Deployment | None) -> int:
        try:
            await provider.terminate(pod.id)
        except ProviderError as exc:
            log.warning("orphan pod not terminated", extra={"pod": pod.id, "error": exc.message})
            return 0
        log.warning("terminated an orphan pod", extra={"pod": pod.id, "pod_name": pod.name})
        metrics.ORPHANS_TERMINATED.labels(provider.name).inc()
        if d is not None:

            def note(current: Deployment) -> Change:
                change = Change()
                change.log("orphan_terminated", f"terminated pod {pod.id}, which no live run owned")
                return change

            await self.store.mutate(d.id, self.clock(), note)
        return 1


_UNKNOWN = Pod(id="", name="", status=PodStatus.RUNNING, message="unknown")


def _finished_quietly(d: Deployment, pod: Pod) -> bool:
    """Exited, not with a failure status, after sending its output: the pod sends the output
    only once training has succeeded (RunPod may not tell the exit status at all)."""
    return pod.status is PodStatus.EXITED and pod.exit_code in (0, None) and d.output is not None


def _owns(d: Deployment, pod: Pod) -> bool:
    """Whether the run still owns the pod: its recorded pod (until confirmed gone), or, while
    the run is live and has none recorded yet, the pod being recorded right now."""
    if d.pod_id == pod.id:
        return not d.pod_released_at
    return d.pod_id is None and not d.state.terminal


def _cost(d: Deployment, now: datetime) -> float:
    """What the pod has cost by `now`: what accrued before the current price, plus the current
    price for the time since."""
    if d.billing_started_at is None:
        return d.cost_usd
    hours = max(0.0, (now - d.billing_started_at).total_seconds() / 3600)
    return round(d.cost_base_usd + d.hourly_usd * hours, 6)


def _end(change: Change, current: Deployment, state: State, error: RunError) -> None:
    change.become(current.state, state, error.message)
    if state is not State.SUCCEEDED:
        change.error = error
    if current.state is State.PENDING:  # no pod was ever asked for: no secret is needed more
        change.forget_secrets()
