"""The EvalService's curation calls: checks and mapping; the work is in services/eval/curation.py.

Every call acts for the caller: the spans read are theirs (the tracing service scopes the
filter to them), the datasets are written as theirs, and another user's curation or dataset is
NOT_FOUND like a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

import grpc

from services.common.errors import invalid_argument, required_id
from services.common.filenames import check_name
from services.common.identity import require_user
from services.common.pagination import page_size
from services.eval.curation import Curator, eval_name
from services.eval.curation_store import CurationStore, curation_message, provenance_message
from services.eval.rule_store import RuleStore
from services.eval.tracing import TracingClient
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.tracing.v1 import spans_pb2 as pb

Context = grpc.aio.ServicerContext[object, object]
MAX_ID = 64
MAX_CHECKS = 50
MAX_CHECK_NAME = 200
MAX_SAMPLE = 50
MAX_LINE = 2**31 - 1  # the column's range
_FORMATS = {cpb.CURATION_FORMAT_SFT: "sft", cpb.CURATION_FORMAT_DPO: "dpo"}


def _fraction(value: float, field: str, low: float, high: float, *, open_low: bool = False) -> None:
    if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        bound = "(" if open_low else "["
        raise invalid_argument(field, f"{field} must be in {bound}{low:g}, {high:g}]")


def check_request(request: cpb.CreateCurationRequest) -> None:
    """Refuse what cannot run, naming the field; fill the defaults in place."""
    if request.format not in _FORMATS:
        raise invalid_argument("format", "format is required: sft or dpo")
    if request.filter.kind == pb.SPAN_KIND_UNSPECIFIED:
        request.filter.kind = pb.SPAN_KIND_LLM
    elif request.filter.kind != pb.SPAN_KIND_LLM:
        raise invalid_argument(
            "filter.kind", "rows are made of LLM calls: leave kind out, or set it to llm"
        )
    conditions = request.conditions
    if conditions.HasField("min_score"):
        _fraction(conditions.min_score, "conditions.min_score", 0, 1)
    if conditions.HasField("min_groundedness"):
        _fraction(conditions.min_groundedness, "conditions.min_groundedness", 0, 1)
    if len(conditions.passed_checks) > MAX_CHECKS:
        raise invalid_argument("conditions.passed_checks", f"at most {MAX_CHECKS} checks")
    for name in conditions.passed_checks:
        if not name or len(name) > MAX_CHECK_NAME:
            raise invalid_argument(
                "conditions.passed_checks",
                f"a check's name is 1 to {MAX_CHECK_NAME} characters (a validator's name, "
                '"judge" or "groundedness")',
            )
    if len(conditions.rule_id) > MAX_ID:
        raise invalid_argument("conditions.rule_id", f"longer than {MAX_ID} characters")
    options = request.options
    _fraction(options.eval_fraction, "options.eval_fraction", 0, 0.5)
    if options.max_per_session < 0:
        raise invalid_argument("options.max_per_session", "must not be negative (0: no cap)")
    if options.HasField("margin"):
        _fraction(options.margin, "options.margin", 0, 1, open_low=True)
    if not 0 <= options.sample_size <= MAX_SAMPLE:
        raise invalid_argument("options.sample_size", f"must be 0 to {MAX_SAMPLE}")


class CurationRpcs:
    """Mixed into the EvalServicer."""

    curations: CurationStore
    curator: Curator
    rules: RuleStore
    tracing: TracingClient
    clock: Callable[[], datetime]

    async def CreateCuration(
        self, request: cpb.CreateCurationRequest, context: Context
    ) -> cpb.CreateCurationResponse:
        owner = require_user()
        check_request(request)
        now = self.clock()
        name = request.name or f"curated-{_FORMATS[request.format]}-{now:%Y%m%d-%H%M%S}.jsonl"
        check_name(name)
        if request.options.eval_fraction > 0:
            check_name(eval_name(name))
        if request.conditions.rule_id:
            await self.rules.get(owner, request.conditions.rule_id)  # NOT_FOUND if not theirs
        # A filter the tracing service refuses is refused now, naming its field.
        await self.tracing.spans(owner, request.filter, "", 1)
        row = await self.curations.create(owner, request, name, now)
        self.curator.wake.set()
        return cpb.CreateCurationResponse(curation=curation_message(row))

    async def GetCuration(
        self, request: cpb.GetCurationRequest, context: Context
    ) -> cpb.GetCurationResponse:
        row = await self.curations.get(
            require_user(), required_id(request.curation_id, "curation_id")
        )
        return cpb.GetCurationResponse(curation=curation_message(row))

    async def ListCurations(
        self, request: cpb.ListCurationsRequest, context: Context
    ) -> cpb.ListCurationsResponse:
        found = await self.curations.list_curations(
            require_user(), page_size(request.page_size), request.page_token
        )
        return cpb.ListCurationsResponse(
            curations=[curation_message(c.row) for c in found.items],
            next_page_token=found.next_page_token,
        )

    async def CancelCuration(
        self, request: cpb.CancelCurationRequest, context: Context
    ) -> cpb.CancelCurationResponse:
        row = await self.curations.cancel(
            require_user(), required_id(request.curation_id, "curation_id"), self.clock()
        )
        return cpb.CancelCurationResponse(curation=curation_message(row))

    async def GetDatasetProvenance(
        self, request: cpb.GetDatasetProvenanceRequest, context: Context
    ) -> cpb.GetDatasetProvenanceResponse:
        dataset_id = required_id(request.dataset_id, "dataset_id")
        if not 0 <= request.line <= MAX_LINE:
            raise invalid_argument("line", f"line counts from 1 to {MAX_LINE} (0: every row)")
        row, rows, token = await self.curations.provenance(
            require_user(),
            dataset_id,
            request.line,
            page_size(request.page_size, 100, 1000),
            request.page_token,
        )
        return cpb.GetDatasetProvenanceResponse(
            curation=curation_message(row),
            rows=[provenance_message(r, dataset_id) for r in rows],
            next_page_token=token,
        )
