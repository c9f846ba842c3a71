"""The DeployService gRPC servicer: checks and mapping; the work is in the modules it calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial

import grpc

from services.common.blobstore import BlobStore
from services.common.errors import ServiceError, invalid_argument, not_found
from services.common.identity import require_user
from services.common.pagination import page_size
from services.deploy import convert, keys, pricing, reports
from services.deploy import outputs as run_outputs
from services.deploy.changes import Changes
from services.deploy.pod_log_store import PodLogStore
from services.deploy.pod_logs import PodLogs
from services.deploy.preflight import Outcome, Preflight
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.spec import Spec, check_request_id, parse
from services.deploy.states import State
from services.deploy.store import Deployment, DeploymentStore
from services.deploy.supervisor import Supervisor
from tunelab.common.v1 import errors_pb2
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deploy_service_pb2_grpc as api_grpc
from tunelab.deploy.v1 import deployments_pb2 as pb

log = logging.getLogger(__name__)

MAX_RETENTION_DAYS = 36500

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]

WATCH_POLL_SECONDS = 1.0


class DeployServicer(api_grpc.DeployServiceServicer):
    def __init__(
        self,
        store: DeploymentStore,
        outputs: BlobStore,
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
        self.logs = PodLogs(
            store,
            PodLogStore(store.db),
            providers.keyring,
            max_lines=settings.max_log_lines,
            follow_seconds=settings.watch_max_seconds,
            clock=clock,
        )

    def _spec(self, message: api.DeploymentSpec) -> Spec:
        return parse(
            message,
            default_image=self.settings.runpod_image,
            container_image=self.settings.container_image,
        )

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
        failures = outcome.failures()
        if failures and all(c.transient for c in failures):
            # Not the request's fault: 503, which clients retry, not 400, which they must not.
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "nothing was rented: " + "; ".join(f"{c.name}: {c.message}" for c in failures),
            )
        if not outcome.ok or outcome.dataset is None:
            failed = "; ".join(f"{c.name}: {c.message}" for c in failures)
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
        d = await reports.run_of(self.store, request.deployment_id, request.job_token)
        d = await reports.record(self.store, d, request.report, self.clock())
        if d.state.terminal and d.pod_id and not d.pod_released_at:
            # Answer the pod first; terminating it is the supervisor's job from here.
            task = asyncio.create_task(self.supervisor.release(d))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        return api.ReportDeploymentResponse(state=d.state.to_proto(), stop=d.state.terminal)

    async def AppendDeploymentLogs(
        self, request: api.AppendDeploymentLogsRequest, context: Context
    ) -> api.AppendDeploymentLogsResponse:
        return await self.logs.append(request)

    async def StreamDeploymentLogs(
        self, request: api.StreamDeploymentLogsRequest, context: Context
    ) -> AsyncIterator[api.StreamDeploymentLogsResponse]:
        async for message in self.logs.stream(require_user(), request):
            yield message

    async def UploadOutput(
        self, request_iterator: AsyncIterator[api.UploadOutputRequest], context: Context
    ) -> api.UploadOutputResponse:
        output = await run_outputs.upload(
            request_iterator,
            authenticate=partial(reports.run_of, self.store),
            store=self.store,
            blobs=self.outputs,
            max_bytes=self.settings.max_output_bytes,
            clock=self.clock,
        )
        return api.UploadOutputResponse(output=convert.output(output))

    async def DownloadOutput(
        self, request: api.DownloadOutputRequest, context: Context
    ) -> AsyncIterator[api.DownloadOutputResponse]:
        d = await self.store.get(require_user(), request.deployment_id)
        async for message in run_outputs.download(d, self.outputs):
            yield message

    async def DeleteOutput(
        self, request: api.DeleteOutputRequest, context: Context
    ) -> api.DeleteOutputResponse:
        d = await self.store.get(require_user(), request.deployment_id)
        await run_outputs.delete(d, store=self.store, blobs=self.outputs, now=self.clock())
        return api.DeleteOutputResponse()

    async def GetOutputRetention(
        self, request: api.GetOutputRetentionRequest, context: Context
    ) -> api.GetOutputRetentionResponse:
        chosen = await self.store.output_retention(require_user())
        return api.GetOutputRetentionResponse(retention=self._retention(chosen))

    async def SetOutputRetention(
        self, request: api.SetOutputRetentionRequest, context: Context
    ) -> api.SetOutputRetentionResponse:
        owner = require_user()
        if not request.use_default and not 0 <= request.days <= MAX_RETENTION_DAYS:
            raise invalid_argument(
                "days",
                f"days must be between 0 (keep until deleted) and {MAX_RETENTION_DAYS}; or set "
                "use_default for the operator's default",
            )
        chosen = None if request.use_default else request.days
        await self.store.set_output_retention(owner, chosen, self.clock())
        return api.SetOutputRetentionResponse(retention=self._retention(chosen))

    def _retention(self, chosen: int | None) -> api.OutputRetention:
        if chosen is None:
            return api.OutputRetention(days=self.settings.output_retention_days, is_default=True)
        return api.OutputRetention(days=chosen, is_default=False)

    async def SetProviderKey(
        self, request: api.SetProviderKeyRequest, context: Context
    ) -> api.SetProviderKeyResponse:
        owner = require_user()
        provider = keys.keyed_provider(request.provider)
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
        provider = keys.keyed_provider(request.provider)
        if not await self.store.delete_key(owner, provider):
            raise not_found("provider key", provider)
        return api.DeleteProviderKeyResponse()

    async def ListGpuTypes(
        self, request: api.ListGpuTypesRequest, context: Context
    ) -> api.ListGpuTypesResponse:
        found = await pricing.gpu_types(
            self.providers, require_user(), request.provider, request.gpu_count
        )
        return api.ListGpuTypesResponse(gpu_types=found)


def _preflight_response(outcome: Outcome) -> api.PreflightDeploymentResponse:
    return api.PreflightDeploymentResponse(
        ok=outcome.ok,
        checks=[convert.check(c) for c in outcome.checks],
        estimate=convert.estimate(outcome.estimate),
    )
