"""The EvalService gRPC servicer: checks and mapping; the work is in the modules it calls."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc

from services.common import egress
from services.common.errors import invalid_argument, required_id
from services.common.identity import require_user
from services.common.pagination import page_size
from services.eval import catalog, summary
from services.eval.curation import Curator
from services.eval.curation_rpcs import CurationRpcs
from services.eval.curation_store import CurationStore
from services.eval.evaluator import Evaluator
from services.eval.judge_keys import JudgeKeys
from services.eval.judgment_store import JudgmentStore
from services.eval.models import JobRow
from services.eval.plan import Plan, parse_plan
from services.eval.rule_store import ACTIVE, RuleStore, job_message
from services.eval.rules import RuleWorker
from services.eval.settings import EvalSettings
from services.eval.tracing import TracingClient
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import eval_service_pb2_grpc as api_grpc
from tunelab.eval.v1 import jobs_pb2
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]
MAX_ID = 64


def utc_now() -> datetime:
    return datetime.now(UTC)


class EvalServicer(CurationRpcs, api_grpc.EvalServiceServicer):
    def __init__(
        self,
        settings: EvalSettings,
        judgments: JudgmentStore,
        rules: RuleStore,
        keys: JudgeKeys,
        tracing: TracingClient,
        evaluator: Evaluator,
        worker: RuleWorker,
        curations: CurationStore,
        curator: Curator,
        clock: Clock = utc_now,
        resolve: egress.Resolver = egress.system_resolver,
    ) -> None:
        self.settings = settings
        self.judgments = judgments
        self.rules = rules
        self.keys = keys
        self.tracing = tracing
        self.evaluator = evaluator
        self.worker = worker
        self.curations = curations
        self.curator = curator
        self.clock = clock
        self.resolve = resolve

    async def _plan(
        self,
        validators: Sequence[jpb.Validator],
        judge: jpb.Judge | None,
        groundedness: jpb.GroundednessCheck | None,
        reference: str,
    ) -> Plan:
        plan = parse_plan(
            validators,
            judge,
            groundedness,
            reference,
            has_operator_judge=self.settings.has_operator_judge,
        )
        if plan.judge and plan.judge.base_url:
            # A URL a user gave: refused here, before anything is stored or sent, when it
            # leads where requests on a user's behalf may not go (checked again per call).
            try:
                await egress.vet(plan.judge.base_url, self.settings.allowlist(), self.resolve)
            except egress.EgressRefused as exc:
                raise invalid_argument("judge.base_url", f"judge.base_url: {exc}") from None
        return plan

    async def Evaluate(
        self, request: api.EvaluateRequest, context: Context
    ) -> api.EvaluateResponse:
        owner = require_user()
        required_id(request.trace_id, "trace_id")
        if len(request.span_id) > MAX_ID:
            raise invalid_argument("span_id", f"span_id is longer than {MAX_ID} characters")
        plan = await self._plan(
            request.validators,
            request.judge if request.HasField("judge") else None,
            request.groundedness if request.HasField("groundedness") else None,
            request.reference,
        )
        judgment, created = await self.evaluator.evaluate(
            owner, request.trace_id, request.span_id, plan, rerun=request.rerun
        )
        return api.EvaluateResponse(judgment=judgment, created=created)

    async def ListValidatorKinds(
        self, request: api.ListValidatorKindsRequest, context: Context
    ) -> api.ListValidatorKindsResponse:
        return api.ListValidatorKindsResponse(kinds=catalog.kinds())

    async def GetSummary(
        self, request: api.GetSummaryRequest, context: Context
    ) -> api.GetSummaryResponse:
        rows = await summary.summary(
            self.judgments.db, require_user(), request.filter, request.group_by
        )
        return api.GetSummaryResponse(rows=[row.message() for row in rows])

    async def ListJudgments(
        self, request: api.ListJudgmentsRequest, context: Context
    ) -> api.ListJudgmentsResponse:
        found = await self.judgments.list_judgments(
            require_user(), request.filter, page_size(request.page_size), request.page_token
        )
        return api.ListJudgmentsResponse(
            judgments=[s.judgment for s in found.items], next_page_token=found.next_page_token
        )

    async def GetJudgment(
        self, request: api.GetJudgmentRequest, context: Context
    ) -> api.GetJudgmentResponse:
        judgment_id = required_id(request.judgment_id, "judgment_id")
        return api.GetJudgmentResponse(
            judgment=await self.judgments.get(require_user(), judgment_id)
        )

    async def CreateRule(
        self, request: api.CreateRuleRequest, context: Context
    ) -> api.CreateRuleResponse:
        owner = require_user()
        name = request.name.strip()
        if not name or len(name) > 200:
            raise invalid_argument("name", "name is required, at most 200 characters")
        rate = request.sampling_rate if request.HasField("sampling_rate") else 1.0
        if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
            raise invalid_argument("sampling_rate", "sampling_rate must be in (0, 1]")
        plan = await self._plan(
            request.validators,
            request.judge if request.HasField("judge") else None,
            request.groundedness if request.HasField("groundedness") else None,
            "",
        )
        where = tapi.SpanFilter()
        where.CopyFrom(request.filter)
        if not (where.roots_only or where.kind or where.trace_id):
            where.roots_only = True  # a rule judges traces unless it names the spans it wants
        # The tracing service checks the filter (and that it is the caller's to use).
        await self.tracing.spans(owner, where, "", 1)
        stored = await self.rules.create(
            owner,
            name,
            where,
            plan.to_config(request.validators),
            plan.key(),
            rate,
            self.clock(),
        )
        self.worker.wake.set()
        return api.CreateRuleResponse(rule=stored.message)

    async def ListRules(
        self, request: api.ListRulesRequest, context: Context
    ) -> api.ListRulesResponse:
        found = await self.rules.list_rules(
            require_user(), page_size(request.page_size), request.page_token
        )
        return api.ListRulesResponse(
            rules=[r.message for r in found.items], next_page_token=found.next_page_token
        )

    async def GetRule(self, request: api.GetRuleRequest, context: Context) -> api.GetRuleResponse:
        rule_id = required_id(request.rule_id, "rule_id")
        return api.GetRuleResponse(rule=(await self.rules.get(require_user(), rule_id)).message)

    async def SetRuleEnabled(
        self, request: api.SetRuleEnabledRequest, context: Context
    ) -> api.SetRuleEnabledResponse:
        rule_id = required_id(request.rule_id, "rule_id")
        stored = await self.rules.set_enabled(require_user(), rule_id, request.enabled)
        self.worker.wake.set()
        return api.SetRuleEnabledResponse(rule=stored.message)

    async def DeleteRule(
        self, request: api.DeleteRuleRequest, context: Context
    ) -> api.DeleteRuleResponse:
        await self.rules.delete(require_user(), required_id(request.rule_id, "rule_id"))
        return api.DeleteRuleResponse()

    async def StartRuleJob(
        self, request: api.StartRuleJobRequest, context: Context
    ) -> api.StartRuleJobResponse:
        owner = require_user()
        rule_id = required_id(request.rule_id, "rule_id")
        now = self.clock()
        start_to = (
            request.start_time_to.ToDatetime(tzinfo=UTC)
            if request.HasField("start_time_to")
            else now
        )
        start_from = (
            request.start_time_from.ToDatetime(tzinfo=UTC)
            if request.HasField("start_time_from")
            else None
        )
        if start_from is not None and start_from >= start_to:
            raise invalid_argument(
                "start_time_from", "start_time_from must be before start_time_to"
            )
        job = await self.rules.create_job(owner, rule_id, start_from, start_to, request.rerun, now)
        self.worker.wake.set()
        return api.StartRuleJobResponse(job=job)

    async def ListRuleJobs(
        self, request: api.ListRuleJobsRequest, context: Context
    ) -> api.ListRuleJobsResponse:
        found = await self.rules.jobs(
            require_user(),
            required_id(request.rule_id, "rule_id"),
            page_size(request.page_size),
            request.page_token,
        )
        return api.ListRuleJobsResponse(
            jobs=[job_message(j.row) for j in found.items], next_page_token=found.next_page_token
        )

    async def _job(
        self,
        request: api.GetRuleJobRequest | api.CancelRuleJobRequest | api.ResumeRuleJobRequest,
    ) -> JobRow:
        """The caller's job the request names (NOT_FOUND if it is not theirs)."""
        return await self.rules.job(
            require_user(),
            required_id(request.rule_id, "rule_id"),
            required_id(request.job_id, "job_id"),
        )

    async def GetRuleJob(
        self, request: api.GetRuleJobRequest, context: Context
    ) -> api.GetRuleJobResponse:
        return api.GetRuleJobResponse(job=job_message(await self._job(request)))

    async def CancelRuleJob(
        self, request: api.CancelRuleJobRequest, context: Context
    ) -> api.CancelRuleJobResponse:
        row = await self._job(request)
        changed = await self.rules.set_job_state(
            row.id, jobs_pb2.JOB_STATE_CANCELLED, self.clock(), only_from=ACTIVE
        )
        return api.CancelRuleJobResponse(job=job_message(changed or row))

    async def ResumeRuleJob(
        self, request: api.ResumeRuleJobRequest, context: Context
    ) -> api.ResumeRuleJobResponse:
        row = await self._job(request)
        if row.state == jobs_pb2.JOB_STATE_SUCCEEDED:
            raise invalid_argument(
                "job_id", "the job has finished: start a new one to judge newer spans"
            )
        changed = await self.rules.set_job_state(
            row.id,
            jobs_pb2.JOB_STATE_QUEUED,
            self.clock(),
            only_from=(jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_FAILED),
        )
        self.worker.wake.set()
        return api.ResumeRuleJobResponse(job=job_message(changed or row))

    async def SetJudgeKey(
        self, request: api.SetJudgeKeyRequest, context: Context
    ) -> api.SetJudgeKeyResponse:
        await self.keys.set(require_user(), request.name, request.api_key, self.clock())
        return api.SetJudgeKeyResponse()

    async def ListJudgeKeys(
        self, request: api.ListJudgeKeysRequest, context: Context
    ) -> api.ListJudgeKeysResponse:
        return api.ListJudgeKeysResponse(judge_keys=await self.keys.list_keys(require_user()))

    async def DeleteJudgeKey(
        self, request: api.DeleteJudgeKeyRequest, context: Context
    ) -> api.DeleteJudgeKeyResponse:
        await self.keys.delete(require_user(), request.name)
        return api.DeleteJudgeKeyResponse()
