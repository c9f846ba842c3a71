"""Launching a run: minting its pod's credentials, renting the pod, recording it.

A launch is safe to repeat: the request is recorded before the provider is asked, and a run
asked for before (then a restart, or an answer lost) adopts the pod found under its name
instead of renting another. Transient refusals (no capacity, rate limits) are retried on later
passes until the provisioning deadline; any other refusal fails the run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import grpc

from services.common import bearer
from services.deploy import metrics
from services.deploy.datasets import DatasetsClient, DownloadLink, describe
from services.deploy.keys import KeyRingError
from services.deploy.pod import render
from services.deploy.providers.base import Pod, PodSpec, Provider, ProviderError, ProviderErrorKind
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.spec import Spec
from services.deploy.states import State, Stop
from services.deploy.store import Change, Deployment, DeploymentStore, RunError

log = logging.getLogger(__name__)

JOB_TOKENS = bearer.BearerTokens("tljb_")
DOWNLOAD_TTL_SECONDS = 2 * 60 * 60
# Worth retrying until the provisioning deadline: capacity comes and goes, rate limits reset.
_TRANSIENT = {
    ProviderErrorKind.NO_CAPACITY,
    ProviderErrorKind.QUOTA,
    ProviderErrorKind.UNAVAILABLE,
}
Clock = Callable[[], datetime]


def pod_name(settings: DeploySettings, deployment_id: str) -> str:
    return f"{settings.pod_name_prefix}-{deployment_id}"


def provider_of(providers: Providers, d: Deployment) -> AbstractAsyncContextManager[Provider]:
    """The provider with the key the run's pod is (or will be) rented with."""
    return providers.open(d.owner, d.spec.provider, d.provider_key_ciphertext)


def pod_config(deployment_id: str, spec: Spec) -> dict[str, Any]:
    """The trainer's config.json, less the paths the pod adds (tunelab_trainer.common.Config)."""
    return {
        "deployment_id": deployment_id,
        "method": spec.method,
        "base_model": spec.base_model,
        "hyperparameters": asdict(spec.hyperparameters),
    }


class Launcher:
    def __init__(
        self,
        store: DeploymentStore,
        providers: Providers,
        datasets: DatasetsClient,
        settings: DeploySettings,
        trainers: dict[str, render.Trainer],
        clock: Clock,
        *,
        leader: Callable[[], Awaitable[bool]],
        release: Callable[[Deployment], Awaitable[None]],
    ) -> None:
        """`leader` says whether this replica still holds the supervisor's lease; `release`
        terminates the pod of a run that ended while its pod was being rented."""
        self.store = store
        self.providers = providers
        self.datasets = datasets
        self.settings = settings
        self.trainers = trainers
        self.clock = clock
        self._leader = leader
        self._release = release
        self._noted: dict[str, str] = {}  # the last provider error logged, per deployment

    async def launch(self, d: Deployment) -> None:
        if not await self._leader():
            return
        name = pod_name(self.settings, d.id)
        link: DownloadLink | None = None
        try:
            if d.state is not State.PENDING:
                # Asked for before (then a restart, or an answer lost): adopt, never rent twice.
                async with provider_of(self.providers, d) as provider:
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
            async with provider_of(self.providers, d) as provider:
                pod = await provider.create(spec)
        except ProviderError as exc:
            if link is not None:  # no pod got it: it must not pile up in the owner's list
                await self.datasets.revoke(d.owner, d.spec.dataset_id, link.token_id)
            await self._provider_refused(d, exc)
            return
        await self._rented(d, pod, adopted=False)

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
        script = render.render(
            render.Bootstrap(
                deployment_id=d.id,
                api_url=self.settings.api_url(d.spec.provider),
                dataset_sha256=d.dataset_sha256,
                dataset_size=d.dataset_size,
                config=pod_config(d.id, d.spec),
                trainer=self.trainers[d.spec.trainer],
                heartbeat_seconds=self.settings.heartbeat_seconds,
                download_attempts=max(1, self.settings.download_token_uses - 1),
            )
        )
        env = {
            render.PACKED_ENV: render.pack(script),
            "TUNELAB_JOB_TOKEN": secret,
            "TUNELAB_DATASET_URL": self.settings.pod_url(d.spec.provider, link.url),
            "TUNELAB_DEPLOYMENT_ID": d.id,
        }
        if d.spec.provider != "local":
            # The GPUs the pod must see before it installs or downloads anything (from our
            # record: the provider's own variable is a fallback the pod reads only without it).
            env["TUNELAB_GPU_COUNT"] = str(d.spec.gpu.count)
        # A trainer that downloads a base model (maybe a gated one) gets the owner's token.
        if d.spec.trainer != "tiny" and (hf := await self.providers.hugging_face_token(d.owner)):
            env["HF_TOKEN"] = hf
        spec = PodSpec(
            name=name,
            image=d.spec.image,
            gpu=d.spec.gpu,
            command=render.launch_command(),
            env=env,
            disk_gb=self.settings.runpod_disk_gb,
            min_cuda_version=self.settings.cuda_floor(d.spec.image),
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
                f" ({pod.gpu_count} x {pod.gpu_type}{', spot' if d.spec.gpu.spot else ''})"
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
            async with provider_of(self.providers, d) as provider:
                await provider.terminate(pod.id)
            return
        if changed:
            metrics.PODS_RENTED.labels(d.spec.provider).inc()
        if d.state.terminal:  # cancelled while the pod was being rented
            await self._release(d)

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

    async def _fail(self, d: Deployment, error: RunError) -> None:
        def fail(current: Deployment) -> Change | None:
            if current.state.terminal:
                return None
            change = Change()
            change.end(current.state, State.FAILED, error)
            return change

        await self.store.mutate(d.id, self.clock(), fail)
        self._noted.pop(d.id, None)
