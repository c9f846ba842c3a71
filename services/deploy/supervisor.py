"""The supervisor: launches pending runs, watches live pods, enforces the limits, terminates
every pod whose run is over, and sweeps up pods named as ours that no run owns.

Everything it knows is in the database, so a restarted supervisor carries on where the last one
stopped: a pod asked for but not recorded is found again by its name (providers' create is
idempotent by name), and a finished run whose pod is not confirmed gone is terminated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta

import grpc

from services.common import bearer
from services.deploy import metrics
from services.deploy.datasets import DatasetsClient, describe
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
from services.deploy.store import Change, Deployment, DeploymentStore, RunError, error_values

log = logging.getLogger(__name__)

JOB_TOKENS = bearer.BearerTokens("tljb_")
DOWNLOAD_TTL_SECONDS = 2 * 60 * 60
# Provider errors that no retry will fix: the run fails with the provider's message.
_FINAL = {
    ProviderErrorKind.NO_CAPACITY,
    ProviderErrorKind.UNAUTHENTICATED,
    ProviderErrorKind.QUOTA,
    ProviderErrorKind.INVALID,
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
        self._wake = asyncio.Event()
        self._last_sweep: datetime | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one failure
                log.exception("supervisor pass failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.supervise_interval_seconds)
            self._wake.clear()

    async def tick(self) -> None:
        for deployment in await self.store.supervised():
            try:
                await self.step(deployment)
            except Exception:
                log.exception(
                    "supervising a deployment failed", extra={"deployment": deployment.id}
                )
        now = self.clock()
        interval = timedelta(seconds=self.settings.orphan_sweep_interval_seconds)
        if self._last_sweep is None or now - self._last_sweep >= interval:
            self._last_sweep = now
            await self.sweep()

    async def step(self, d: Deployment) -> None:
        if d.state in (State.PENDING, State.PROVISIONING) and not d.pod_id:
            await self.launch(d)
        elif not d.state.terminal:
            await self.watch(d)
        elif d.pod_id and not d.pod_released_at:
            await self.release(d)

    # Launching --------------------------------------------------------------------------------

    async def launch(self, d: Deployment) -> None:
        name = pod_name(self.settings, d.id)
        try:
            async with self.providers.open(d.owner, d.spec.provider) as provider:
                if d.state is State.PROVISIONING:
                    # A pod asked for before a restart may exist: adopt it, never rent twice.
                    found = [p for p in await provider.list_pods(name) if p.name == name]
                    if found:
                        await self._rented(d, found[0], "found again after a restart")
                        return
                spec = await self._pod_spec(d, name)
                if spec is None:
                    return
                pod = await provider.create(spec)
        except ProviderError as exc:
            await self._provider_refused(d, exc)
            return
        await self._rented(d, pod, "")

    async def _pod_spec(self, d: Deployment, name: str) -> PodSpec | None:
        """Mint the pod's credentials, record the request, and build what the provider runs;
        None when the run cannot start (it is failed) or must wait (it stays pending)."""
        try:
            link = await self.datasets.download_link(
                d.owner,
                d.spec.dataset_id,
                ttl_seconds=DOWNLOAD_TTL_SECONDS,
                max_uses=self.settings.download_token_uses,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                await self._fail(d, RunError("DATASET_UNAVAILABLE", describe(exc)))
            else:
                log.warning(
                    "datasets service unavailable; launch retried", extra={"error": describe(exc)}
                )
            return None
        secret = JOB_TOKENS.new_secret()
        now = self.clock()

        def request(current: Deployment) -> Change | None:
            change = Change({"job_token_hash": bearer.digest(secret)})
            if current.state is State.PENDING:
                change.become(
                    current.state, State.PROVISIONING, f"asking {d.spec.provider} for a pod"
                )
            elif current.state is not State.PROVISIONING or current.pod_id:
                return None  # cancelled meanwhile, or launched by another replica
            return change

        d, changed = await self.store.mutate(d.id, now, request)
        if not changed:
            return None
        trainer = self.trainers[d.spec.provider]
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
                trainer=trainer,
                heartbeat_seconds=self.settings.heartbeat_seconds,
                download_attempts=max(1, self.settings.download_token_uses - 1),
            )
        )
        return PodSpec(
            name=name,
            image=d.spec.image,
            gpu=d.spec.gpu,
            command=render.launch_command(),
            env={
                render.PACKED_ENV: render.pack(script),
                "TUNELAB_JOB_TOKEN": secret,
                "TUNELAB_DATASET_URL": link.url,
                "TUNELAB_DEPLOYMENT_ID": d.id,
            },
            disk_gb=self.settings.runpod_disk_gb,
        )

    async def _rented(self, d: Deployment, pod: Pod, note: str) -> None:
        now = self.clock()

        def record(current: Deployment) -> Change:
            change = Change(
                {
                    "pod_id": pod.id,
                    "gpu_type": pod.gpu_type or current.gpu_type,
                    "hourly_usd": pod.hourly_usd,
                    "billing_started_at": current.billing_started_at or now,
                }
            )
            where = (
                f" ({pod.gpu_count} x {pod.gpu_type}{', spot' if pod.spot else ''})"
                if pod.gpu_type
                else ""
            )
            price = f" at ${pod.hourly_usd:.2f}/h" if pod.hourly_usd else ""
            change.log("pod_rented", f"pod {pod.id}{where}{price}{'; ' + note if note else ''}")
            if current.state is State.PENDING:
                change.become(current.state, State.PROVISIONING, "pod asked for")
            return change

        d, changed = await self.store.mutate(d.id, now, record)
        if changed:
            metrics.PODS_RENTED.labels(d.spec.provider).inc()
        if d.state.terminal:  # cancelled while the pod was being rented
            await self.release(d)

    async def _provider_refused(self, d: Deployment, exc: ProviderError) -> None:
        if exc.kind in _FINAL:
            await self._fail(d, RunError(Stop.PROVIDER_REFUSED, exc.message))
            return
        now = self.clock()
        if now - d.created_at >= timedelta(minutes=d.spec.max_runtime_minutes):
            await self._fail(
                d, RunError(Stop.MAX_RUNTIME, f"no pod could be rented: {exc.message}")
            )
            return

        def note(current: Deployment) -> Change:
            change = Change()
            change.log("provider_error", f"{exc.message}; retrying")
            return change

        await self.store.mutate(d.id, now, note)

    # Watching ---------------------------------------------------------------------------------

    async def watch(self, d: Deployment) -> None:
        assert d.pod_id is not None
        try:
            async with self.providers.open(d.owner, d.spec.provider) as provider:
                pod = await provider.get(d.pod_id)
        except ProviderError as exc:
            log.warning("could not read the pod", extra={"deployment": d.id, "error": exc.message})
            pod = _UNKNOWN
        now = self.clock()
        verdict = self._verdict(d, pod, now)

        def update(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            change = Change({"cost_usd": _cost(current, now)})
            if pod is not _UNKNOWN and pod is not None and pod.status is PodStatus.RUNNING:
                if current.started_at is None:
                    change.values["started_at"] = now
                if current.state is State.PROVISIONING:
                    change.become(current.state, State.STARTING, "the pod is running")
            if verdict is not None:
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
        runtime = now - d.created_at
        if runtime >= timedelta(minutes=d.spec.max_runtime_minutes):
            return RunError(
                Stop.MAX_RUNTIME, f"max_runtime_minutes ({d.spec.max_runtime_minutes}) reached"
            )
        # Stop before the next pass would cross the cost limit, not after.
        ahead = d.hourly_usd * self.settings.supervise_interval_seconds / 3600
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
            async with self.providers.open(d.owner, d.spec.provider) as provider:
                await provider.terminate(d.pod_id)
        except ProviderError as exc:
            log.warning("pod not terminated yet", extra={"deployment": d.id, "error": exc.message})
            return
        now = self.clock()

        def released(current: Deployment) -> Change | None:
            if current.pod_released_at is not None:
                return None
            change = Change({"pod_released_at": now, "cost_usd": _cost(current, now)})
            change.log("pod_terminated", f"pod {current.pod_id} terminated")
            return change

        _, changed = await self.store.mutate(d.id, now, released)
        if changed:
            metrics.PODS_TERMINATED.labels(d.spec.provider).inc()

    async def _fail(self, d: Deployment, error: RunError) -> None:
        def fail(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            change = Change()
            _end(change, current, State.FAILED, error)
            return change

        await self.store.mutate(d.id, self.clock(), fail)

    # The orphan sweep -------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Terminate pods named as ours that no deployment owns: a duplicate, the pod of a
        finished run, or one whose deployment this database never recorded."""
        prefix = f"{self.settings.pod_name_prefix}-"
        terminated = 0
        async for owner, provider in self.providers.accounts():
            try:
                pods = await provider.list_pods(prefix)
            except ProviderError as exc:
                log.warning("orphan sweep could not list pods", extra={"error": exc.message})
                continue
            known = await self.store.known_ids([p.name.removeprefix(prefix) for p in pods])
            for pod in pods:
                d = known.get(pod.name.removeprefix(prefix))
                if d is not None and d.owner != owner and provider.name != "local":
                    d = None  # named like another user's run, in this user's account
                if d is not None and not d.state.terminal and d.pod_id in (None, pod.id):
                    continue  # its own live pod (or one being recorded right now)
                if (
                    d is not None
                    and d.state.terminal
                    and d.pod_id == pod.id
                    and not d.pod_released_at
                ):
                    continue  # release() is on it
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


def _cost(d: Deployment, now: datetime) -> float:
    if d.billing_started_at is None:
        return d.cost_usd
    hours = max(0.0, (now - d.billing_started_at).total_seconds() / 3600)
    return round(d.hourly_usd * hours, 6)


def _end(change: Change, current: Deployment, state: State, error: RunError) -> None:
    change.become(current.state, state, error.message)
    if state is not State.SUCCEEDED:
        change.values.update(error_values(error))
