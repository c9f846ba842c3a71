"""The supervisor: launches pending runs (launch.py), watches live pods, enforces the limits,
terminates every pod whose run is over, and sweeps up pods named as ours that no run owns
(sweep.py).

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
import secrets
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta

from services.deploy import metrics, pod_logs
from services.deploy.billing import Billing
from services.deploy.datasets import DatasetsClient
from services.deploy.launch import Launcher, pod_name, provider_of
from services.deploy.pod import render
from services.deploy.providers.base import (
    Pod,
    PodStatus,
    Provider,
    ProviderError,
    ProviderErrorKind,
    cuda_version,
)
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.states import State, Stop
from services.deploy.store import Change, Deployment, DeploymentStore, RunError
from services.deploy.sweep import OrphanSweep

log = logging.getLogger(__name__)

LEASE = "supervisor"
# Steps of different runs go on side by side (a slow provider must not hold up the others).
CONCURRENT_STEPS = 16
# How often the supervisor looks for bills due (each run's is looked at every
# billing_check_minutes, whatever the answer).
BILLING_EVERY = timedelta(minutes=1)
# How much of a pod's own log a run that died unreported keeps in its error.
POD_LOG_TAIL_LINES = 40
Clock = Callable[[], datetime]


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
        self.settings = settings
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._last_sweep: datetime | None = None
        self._last_billing: datetime | None = None
        self.billing = Billing(store, providers, settings, clock)
        self._last_tick: datetime | None = None
        self._gap = timedelta(seconds=settings.supervise_interval_seconds)
        self.launcher = Launcher(
            store,
            providers,
            datasets,
            settings,
            trainers,
            clock,
            leader=self._leader,
            release=self.release,
        )
        self._sweep = OrphanSweep(store, providers, settings, clock)

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
        if self._last_billing is None or now - self._last_billing >= BILLING_EVERY:
            self._last_billing = now
            await self.billing.reconcile()

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
            await self.launcher.launch(d)
        else:
            await self.watch(d)

    # Watching ---------------------------------------------------------------------------------

    async def watch(self, d: Deployment) -> None:
        assert d.pod_id is not None
        tail: tuple[str, ...] = ()
        try:
            async with provider_of(self.providers, d) as provider:
                pod = await provider.get(d.pod_id)
                if pod is not None and pod.status in _STOPPED and not _finished_quietly(d, pod):
                    tail = await self._log_tail(provider, d, pod)
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
                change.end(current.state, State.SUCCEEDED, RunError("", message))
            elif verdict := self._verdict(current, pod, now):
                if tail and not verdict.log_tail:  # the provider says why no better than this
                    verdict = replace(verdict, log_tail=tail)
                change.end(current.state, State.FAILED, verdict)
            return change

        d, _ = await self.store.mutate(d.id, now, update)
        if d.state.terminal:
            await self.release(d)

    async def _log_tail(self, provider: Provider, d: Deployment, pod: Pod) -> tuple[str, ...]:
        """The stopped pod's last lines as the provider kept them, sanitized: the only account
        of a pod that died before it could report (RunPod tells no exit status or reason)."""
        try:
            lines = await provider.log_tail(pod.id, POD_LOG_TAIL_LINES)
        except ProviderError as exc:
            log.info("no log tail", extra={"deployment": d.id, "error": exc.message})
            return ()
        secrets = await pod_logs.run_secrets(d, self.store, self.providers.keyring)
        return tuple(pod_logs.sanitize(lines, secrets))

    def _host_too_old(self, d: Deployment, pod: Pod) -> str | None:
        """Why the pod's host cannot run the image, when the provider placed it on one whose
        driver is older than the image's CUDA (a spot pod cannot ask for better): its torch
        would see no GPU, so it is stopped before it bills on."""
        floor = self.settings.cuda_floor(d.spec.image)
        if not pod.cuda_version or floor is None:
            return None
        if cuda_version(pod.cuda_version) >= cuda_version(floor):
            return None
        return (
            f"the pod's host runs CUDA {pod.cuda_version}, older than the {floor} the image "
            "needs: its torch cannot use the GPU, so the pod was stopped before it trained"
        )

    def _verdict(self, d: Deployment, pod: Pod | None, now: datetime) -> RunError | None:
        """Why the run must end now, or None."""
        if pod is None or (pod is not _UNKNOWN and pod.status is PodStatus.TERMINATED):
            return RunError(Stop.POD_VANISHED, "the provider no longer has the pod")
        if pod.status is PodStatus.FAILED:
            return RunError(Stop.POD_FAILED, pod.message or "the provider reports the pod failed")
        if too_old := self._host_too_old(d, pod):
            return RunError(Stop.GPU_UNAVAILABLE, too_old)
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
            change.end(
                current.state, State.CANCELLED, RunError(Stop.CANCELLED, "cancelled by its owner")
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
            async with provider_of(self.providers, d) as provider:
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
            async with provider_of(self.providers, d) as provider:
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

    async def sweep(self) -> int:
        """Terminate pods named as ours that no run owns (see sweep.py); returns how many."""
        return await self._sweep.run()


_UNKNOWN = Pod(id="", name="", status=PodStatus.RUNNING, message="unknown")
_STOPPED = (PodStatus.FAILED, PodStatus.EXITED)


def _finished_quietly(d: Deployment, pod: Pod) -> bool:
    """Exited, not with a failure status, after sending its output: the pod sends the output
    only once training has succeeded (RunPod may not tell the exit status at all)."""
    return pod.status is PodStatus.EXITED and pod.exit_code in (0, None) and d.output is not None


def _cost(d: Deployment, now: datetime) -> float:
    """What the pod has cost by `now`: what accrued before the current price, plus the current
    price for the time since."""
    if d.billing_started_at is None:
        return d.cost_usd
    hours = max(0.0, (now - d.billing_started_at).total_seconds() / 3600)
    return round(d.cost_base_usd + d.hourly_usd * hours, 6)
