"""The DeployService gRPC servicer: checks and mapping; the work is in the modules it calls."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import grpc

from services.common import redact
from services.common.blobstore import BlobError, LocalBlobStore, read_range
from services.common.errors import (
    ServiceError,
    invalid_argument,
    not_found,
    storage_unavailable,
    unauthenticated,
)
from services.common.identity import require_user
from services.common.pagination import page_size
from services.common.receive import receive
from services.deploy import convert, keys
from services.deploy.changes import Changes
from services.deploy.preflight import Outcome, Preflight
from services.deploy.providers.base import ProviderError, ProviderErrorKind
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.spec import Spec, check_request_id, parse
from services.deploy.states import State, Stop
from services.deploy.store import (
    Change,
    Deployment,
    DeploymentStore,
    Output,
    RunError,
)
from services.deploy.supervisor import JOB_TOKENS, Supervisor
from tunelab.common.v1 import errors_pb2
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deploy_service_pb2_grpc as api_grpc
from tunelab.deploy.v1 import deployments_pb2 as pb

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]

# "huggingface": a token pods get as HF_TOKEN, for gated base models.
KEYED_PROVIDERS = ("runpod", "huggingface")
WATCH_POLL_SECONDS = 1.0
MAX_LOG_TAIL_LINES = 100
AUTH_DRAIN_BYTES = 64 * 1024**2
MAX_LINE_CHARS = 1000
_PHASE_STATE = {
    api.REPORT_PHASE_STARTING: State.STARTING,
    api.REPORT_PHASE_DOWNLOADING: State.DOWNLOADING,
    api.REPORT_PHASE_TRAINING: State.TRAINING,
}


class DeployServicer(api_grpc.DeployServiceServicer):
    def __init__(
        self,
        store: DeploymentStore,
        outputs: LocalBlobStore,
        preflight: Preflight,
        providers: Providers,
        supervisor: Supervisor,
        changes: Changes,
        settings: DeploySettings,
        clock: Clock,
    ) -> None:
        self.store = store
        self.outputs = outputs
        self.preflight = preflight
        self.providers = providers
        self.supervisor = supervisor
        self.changes = changes
        self.settings = settings
        self.clock = clock
        self._releases: set[asyncio.Task[None]] = set()

    def _spec(self, message: api.DeploymentSpec) -> Spec:
        return parse(message, default_image=self.settings.runpod_image)

    async def PreflightDeployment(
        self, request: api.PreflightDeploymentRequest, context: Context
    ) -> api.PreflightDeploymentResponse:
        owner = require_user()
        outcome = await self.preflight.run(owner, self._spec(request.deployment))
        return _preflight_response(outcome)

    async def CreateDeployment(
        self, request: api.CreateDeploymentRequest, context: Context
    ) -> api.CreateDeploymentResponse:
        owner = require_user()
        request_id = check_request_id(request.request_id)
        spec = self._spec(request.deployment)
        if request_id and (earlier := await self._earlier(owner, request_id, spec)):
            return api.CreateDeploymentResponse(deployment=convert.deployment(earlier))
        outcome = await self.preflight.run(owner, spec)
        if not outcome.ok or outcome.dataset is None:
            failed = "; ".join(f"{c.name}: {c.message}" for c in outcome.failures())
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pre-flight checks failed, nothing was rented: {failed}",
                errors_pb2.ERROR_REASON_PREFLIGHT_FAILED,
                {"failed_checks": ",".join(c.name for c in outcome.failures())},
            )
        try:
            deployment = await self.store.create(
                owner=owner,
                request_id=request_id,
                spec=spec,
                dataset_sha256=outcome.dataset.sha256,
                dataset_size=outcome.dataset.size_bytes,
                hourly_usd=outcome.estimate.hourly_usd,
                now=self.clock(),
            )
        except ServiceError as exc:
            # The same key sent twice at once: the other request made the deployment.
            raced = request_id and exc.code == grpc.StatusCode.ABORTED
            if raced and (earlier := await self._earlier(owner, request_id or "", spec)):
                return api.CreateDeploymentResponse(deployment=convert.deployment(earlier))
            raise
        log.info(
            "deployment created",
            extra={"deployment": deployment.id, "provider": spec.provider, "method": spec.method},
        )
        self.supervisor.wake()
        return api.CreateDeploymentResponse(deployment=convert.deployment(deployment))

    async def _earlier(self, owner: str, request_id: str, spec: Spec) -> Deployment | None:
        found = await self.store.find_request(owner, request_id)
        if found is None:
            return None
        deployment, digest = found
        if digest != spec.digest():
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this idempotency key made deployment {deployment.id} from a different request; "
                "use a new key for a new deployment",
                errors_pb2.ERROR_REASON_IDEMPOTENCY_KEY_REUSED,
                {"deployment_id": deployment.id},
            )
        return deployment

    async def GetDeployment(
        self, request: api.GetDeploymentRequest, context: Context
    ) -> api.GetDeploymentResponse:
        d = await self.store.get(require_user(), request.deployment_id)
        return api.GetDeploymentResponse(deployment=convert.deployment(d))

    async def ListDeployments(
        self, request: api.ListDeploymentsRequest, context: Context
    ) -> api.ListDeploymentsResponse:
        if request.state not in pb.DeploymentState.values():
            raise invalid_argument("state", "state is not a deployment state")
        state = State.from_proto(request.state) if request.state else None
        found = await self.store.list_owned(
            require_user(), page_size(request.page_size), request.page_token, state
        )
        return api.ListDeploymentsResponse(
            deployments=[convert.deployment(d) for d in found.items],
            next_page_token=found.next_page_token,
        )

    async def CancelDeployment(
        self, request: api.CancelDeploymentRequest, context: Context
    ) -> api.CancelDeploymentResponse:
        d = await self.store.get(require_user(), request.deployment_id)
        d = await self.supervisor.cancel(d)
        return api.CancelDeploymentResponse(deployment=convert.deployment(d))

    async def ListDeploymentEvents(
        self, request: api.ListDeploymentEventsRequest, context: Context
    ) -> api.ListDeploymentEventsResponse:
        found = await self.store.events(
            require_user(),
            request.deployment_id,
            page_size(request.page_size, default=100, maximum=1000),
            request.page_token,
        )
        return api.ListDeploymentEventsResponse(
            events=[convert.event(e) for e in found.items],
            next_page_token=found.next_page_token,
        )

    async def ListDeploymentMetrics(
        self, request: api.ListDeploymentMetricsRequest, context: Context
    ) -> api.ListDeploymentMetricsResponse:
        found = await self.store.metrics(
            require_user(),
            request.deployment_id,
            page_size(request.page_size, default=100, maximum=1000),
            request.page_token,
        )
        return api.ListDeploymentMetricsResponse(
            metrics=[convert.metric(m) for m in found.items],
            next_page_token=found.next_page_token,
        )

    async def WatchDeployment(
        self, request: api.WatchDeploymentRequest, context: Context
    ) -> AsyncIterator[api.WatchDeploymentResponse]:
        owner = require_user()
        sequence = request.after_sequence
        if sequence < 0:
            raise invalid_argument("after_sequence", "after_sequence must not be negative")
        sent: tuple[object, ...] = ()
        ends = asyncio.get_running_loop().time() + self.settings.watch_max_seconds
        while asyncio.get_running_loop().time() < ends:
            d = await self.store.get(owner, request.deployment_id)
            events = (
                await self.store.events_after(d.id, sequence) if d.event_count > sequence else []
            )
            seen = (d.updated_at, d.cost_usd, d.state)
            if events or seen != sent:
                sent = seen
                if events:
                    sequence = events[-1].sequence
                yield api.WatchDeploymentResponse(
                    deployment=convert.deployment(d), events=[convert.event(e) for e in events]
                )
            if d.state.terminal and sequence >= d.event_count:
                return
            await self.changes.wait(d.id, WATCH_POLL_SECONDS)

    async def ReportDeployment(
        self, request: api.ReportDeploymentRequest, context: Context
    ) -> api.ReportDeploymentResponse:
        d = await self._run_of(request.deployment_id, request.job_token)
        report = request.report
        if report.phase not in api.ReportPhase.values() or not report.phase:
            raise invalid_argument(
                "report.phase",
                "report.phase is required: starting, downloading, training, succeeded or failed",
            )
        _check_report(report)
        now = self.clock()

        def apply(current: Deployment) -> Change | None:
            if current.state.terminal:
                raise _finished(current)
            return _apply_report(current, report, now)

        d, _ = await self.store.mutate(d.id, now, apply)
        if report.HasField("progress"):
            await self.store.add_metric(d.id, _progress(report.progress), now)
        if d.state.terminal and d.pod_id and not d.pod_released_at:
            # Answer the pod first; terminating it is the supervisor's job from here.
            task = asyncio.create_task(self.supervisor.release(d))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        return api.ReportDeploymentResponse(state=d.state.to_proto(), stop=d.state.terminal)

    async def UploadOutput(
        self, request_iterator: AsyncIterator[api.UploadOutputRequest], context: Context
    ) -> api.UploadOutputResponse:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            raise invalid_argument("deployment_id", "the stream is empty") from None
        # A stranger's upload is read on only this far before the refusal (see below).
        budget = AUTH_DRAIN_BYTES
        try:
            d = await self._run_of(first.deployment_id, first.job_token)
            if d.state.terminal:
                raise _finished(d)
            if first.chunk:
                raise invalid_argument(
                    "chunk", "the first message names the run; the file starts in the second"
                )
            budget = self.settings.max_output_bytes
            stored = await receive(_chunks(request_iterator), self.outputs, max_bytes=budget)
        except ServiceError:
            # Refused while the pod is still sending: read the rest first (a gRPC client whose
            # send fails reports that, not our status).
            await _drain(request_iterator, budget)
            raise
        now = self.clock()
        output = Output(stored.blob_key, stored.size_bytes, stored.sha256, now)
        replaced: Output | None = None

        def attach(current: Deployment) -> Change:
            nonlocal replaced
            if current.state.terminal:
                raise _finished(current)
            replaced = current.output
            change = Change(output=output)
            change.log("output_received", f"{stored.size_bytes} bytes, sha256 {stored.sha256}")
            return change

        try:
            after, _ = await self.store.mutate(d.id, now, attach)
        except BaseException:
            await asyncio.to_thread(self.outputs.delete, stored.blob_key)
            raise
        if replaced is not None:
            await asyncio.to_thread(self.outputs.delete, replaced.blob_key)
        log.info("output stored", extra={"deployment": d.id, "size_bytes": stored.size_bytes})
        assert after.output is not None
        return api.UploadOutputResponse(output=convert.output(after.output))

    async def DownloadOutput(
        self, request: api.DownloadOutputRequest, context: Context
    ) -> AsyncIterator[api.DownloadOutputResponse]:
        d = await self.store.get(require_user(), request.deployment_id)
        if d.output is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"deployment {d.id} has no output (yet): its pod sends it when training succeeds",
                errors_pb2.ERROR_REASON_NOT_FOUND,
                {"kind": "output"},
            )
        try:
            blob = await asyncio.to_thread(self.outputs.open, d.output.blob_key)
        except BlobError as exc:
            log.error("output blob unreadable", extra={"deployment": d.id, "error": str(exc)})
            raise storage_unavailable() from None
        try:
            yield api.DownloadOutputResponse(output=convert.output(d.output))
            async for chunk in read_range(blob, 0, blob.size):
                yield api.DownloadOutputResponse(chunk=chunk)
        finally:
            blob.close()

    async def _run_of(self, deployment_id: str, job_token: str) -> Deployment:
        """The deployment whose job token this is; UNAUTHENTICATED for anything else."""
        d = await self.store.get_any(deployment_id) if deployment_id else None
        if d is None or not JOB_TOKENS.matches(job_token, d.job_token_hash):
            raise _not_the_job_token()
        return d

    async def SetProviderKey(
        self, request: api.SetProviderKeyRequest, context: Context
    ) -> api.SetProviderKeyResponse:
        owner = require_user()
        provider = _keyed_provider(request.provider)
        if not keys.valid_api_key(request.api_key):
            raise invalid_argument(
                "api_key", "api_key must be 8 to 512 printable characters without spaces"
            )
        ciphertext = self.providers.keyring.encrypt(request.api_key)
        await self.store.set_key(
            owner, provider, ciphertext, keys.last4(request.api_key), self.clock()
        )
        log.info("provider key set", extra={"provider": provider})
        return api.SetProviderKeyResponse()

    async def ListProviderKeys(
        self, request: api.ListProviderKeysRequest, context: Context
    ) -> api.ListProviderKeysResponse:
        found = await self.store.keys(require_user())
        return api.ListProviderKeysResponse(provider_keys=[convert.provider_key(k) for k in found])

    async def DeleteProviderKey(
        self, request: api.DeleteProviderKeyRequest, context: Context
    ) -> api.DeleteProviderKeyResponse:
        owner = require_user()
        provider = _keyed_provider(request.provider)
        if not await self.store.delete_key(owner, provider):
            raise not_found("provider key", provider)
        return api.DeleteProviderKeyResponse()

    async def ListGpuTypes(
        self, request: api.ListGpuTypesRequest, context: Context
    ) -> api.ListGpuTypesResponse:
        owner = require_user()
        provider = request.provider or "runpod"
        if provider == "local":
            return api.ListGpuTypesResponse()
        if provider != "runpod":
            raise invalid_argument("provider", "GPU types come from provider runpod (or local)")
        if not 0 <= request.gpu_count <= 8:
            raise invalid_argument("gpu_count", "gpu_count must be between 1 and 8")
        try:
            async with self.providers.open(owner, provider) as client:
                found = await client.gpu_types()
        except ProviderError as exc:
            raise _provider_error(exc) from None
        count = request.gpu_count or 1
        return api.ListGpuTypesResponse(
            gpu_types=[
                pb.GpuType(
                    id=g.id,
                    display_name=g.display_name,
                    memory_gb=g.memory_gb,
                    secure_usd=(g.secure_usd or 0) * count,
                    community_usd=(g.community_usd or 0) * count,
                    secure_spot_usd=(g.secure_spot_usd or 0) * count,
                    community_spot_usd=(g.community_spot_usd or 0) * count,
                )
                for g in found
            ]
        )


def _preflight_response(outcome: Outcome) -> api.PreflightDeploymentResponse:
    return api.PreflightDeploymentResponse(
        ok=outcome.ok,
        checks=[convert.check(c) for c in outcome.checks],
        estimate=convert.estimate(outcome.estimate),
    )


def _keyed_provider(provider: str) -> str:
    if provider == "local":
        raise invalid_argument("provider", "the local provider needs no key")
    if provider not in KEYED_PROVIDERS:
        raise invalid_argument("provider", f"provider must be one of {', '.join(KEYED_PROVIDERS)}")
    return provider


def _provider_error(exc: ProviderError) -> ServiceError:
    if exc.kind is ProviderErrorKind.UNAUTHENTICATED:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            exc.message,
            errors_pb2.ERROR_REASON_PROVIDER_KEY_MISSING,
        )
    if exc.kind is ProviderErrorKind.QUOTA:
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, exc.message, errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE
    )


def _not_the_job_token() -> ServiceError:
    return unauthenticated(
        "this is not the job token of that deployment: only the token its pod was given works"
    )


async def _chunks(messages: AsyncIterator[api.UploadOutputRequest]) -> AsyncIterator[bytes]:
    async for message in messages:
        if message.chunk:
            yield message.chunk


async def _drain(messages: AsyncIterator[api.UploadOutputRequest], budget: int) -> None:
    async for message in messages:
        budget -= len(message.chunk)
        if budget < 0:
            break


def _finished(d: Deployment) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the run is over ({d.state.value}): its job token reports nothing more; stop the pod",
        errors_pb2.ERROR_REASON_RUN_FINISHED,
        {"state": d.state.value},
    )


def _check_report(report: api.Report) -> None:
    if len(report.message) > 2000:
        raise invalid_argument("report.message", "report.message is longer than 2000 characters")
    if len(report.log_tail) > MAX_LOG_TAIL_LINES:
        raise invalid_argument(
            "report.log_tail", f"report.log_tail holds more than {MAX_LOG_TAIL_LINES} lines"
        )
    if len(report.system_info) > 32 or any(
        len(k) > 64 or len(v) > 512 for k, v in report.system_info.items()
    ):
        raise invalid_argument(
            "report.system_info", "system_info: at most 32 entries, keys 64 and values 512 long"
        )


def _progress(p: pb.Progress) -> dict[str, float]:
    """The fields set, finite ones only (a diverged loss is NaN: it is left out)."""
    values: dict[str, float] = {}
    for field, value in p.ListFields():
        if isinstance(value, int | float) and math.isfinite(value):
            values[field.name] = value
    return values


def _apply_report(current: Deployment, report: api.Report, now: datetime) -> Change:
    change = Change(last_report_at=now)
    if report.system_info:
        info = {k[:64]: redact.redact(v)[:512] for k, v in report.system_info.items()}
        change.system_info = {**current.system_info, **info}
    if report.HasField("progress"):
        change.progress = {**current.progress, **_progress(report.progress)}
    message = redact.redact(report.message)
    if report.phase in _PHASE_STATE:
        target = _PHASE_STATE[report.phase]
        if current.state.can_become(target):
            change.become(current.state, target, message or f"the pod reports {target.value}")
        elif message:
            change.log("report", message)
    elif report.phase == api.REPORT_PHASE_SUCCEEDED:
        change.become(current.state, State.SUCCEEDED, message or "the pod reports success")
    else:
        stop = Stop.TRAINER_FAILED if current.state is State.TRAINING else Stop.BOOTSTRAP_FAILED
        tail = tuple(redact.redact(line)[:MAX_LINE_CHARS] for line in report.log_tail)
        error = RunError(stop, message or "the pod reports failure", report.exit_code or None, tail)
        change.become(current.state, State.FAILED, error.message)
        change.error = error
    return change
