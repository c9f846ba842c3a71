"""Curations at work: judged spans become a fine-tuning dataset, as a background job.

A job runs in two steps, each resumable:
1. Collect: walk the tracing list (the caller's spans, LLM calls by default) a page at a time;
   read each span's judgments, turn its input into chat turns and its output into the last
   assistant turn, and store it as a candidate with its score, whether it met the conditions,
   its input's key and session. Each page's candidates are stored with the page token after
   it, so a restart goes on from there.
2. Write: choose the rows in the database (dedupe by input, DPO pairs, the per-session cap:
   window functions over the candidates, streamed in reading order), write them as JSONL
   through the datasets service (a second dataset for the held-out inputs), and record each
   row's trace and span. A dry run goes through the same rows, counts them and keeps a sample.
Candidates are dropped when the job ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Literal

import grpc
import orjson
from google.protobuf import struct_pb2

from services.common.db import Database
from services.common.errors import RemoteError, ServiceError
from services.eval.chat import chat_input, chat_output, input_key
from services.eval.conditions import verdicts
from services.eval.curation_store import (
    Candidate,
    CurationStore,
    Selected,
    progress_of,
    request_of,
)
from services.eval.datasets import DatasetsClient
from services.eval.models import CurationRow
from services.eval.scrub import scrub_messages
from services.eval.tracing import TracingClient
from tunelab.datasets.v1 import datasets_pb2
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.eval.v1 import jobs_pb2
from tunelab.tracing.v1 import spans_pb2 as pb

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
PAGE = 500
MAX_RUNNING = 2
CHUNK_BYTES = 1024 * 1024
PROVENANCE_BATCH = 1000
DEFAULT_MARGIN = 0.2
DEFAULT_SAMPLE = 5


class Cancelled(Exception):
    """The job was cancelled (or deleted) while it wrote."""


def eval_name(name: str) -> str:
    """The evaluation split's dataset name: "train.jsonl" -> "train-eval.jsonl"."""
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and suffix.isascii() and suffix.isalnum() and len(suffix) <= 8:
        return f"{stem}-eval.{suffix}"
    return f"{name}-eval"


def _value(span: pb.Span, field: Literal["input", "output"]) -> Any:
    return plain(getattr(span, field)) if span.HasField(field) else None


def plain(value: struct_pb2.Value) -> Any:
    """A protobuf Value as Python JSON values: what json_format.MessageToDict gives, several
    times faster (a third of a curation's time went there). The tracing service bounds the
    nesting it stores, so the recursion is bounded too."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return {key: plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [plain(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    return None


def _holdout(key: str, fraction: float) -> bool:
    """Whether an input is held out: by its key (a sha256), so the same every time."""
    return fraction > 0 and int(key[:8], 16) / 2**32 < fraction


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Curator:
    def __init__(
        self,
        store: CurationStore,
        db: Database,
        tracing: TracingClient,
        datasets: DatasetsClient,
        clock: Clock,
        *,
        interval: float,
    ) -> None:
        self.store = store
        self.db = db
        self.tracing = tracing
        self.datasets = datasets
        self.clock = clock
        self.interval = interval
        self.running: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()

    async def run_forever(self) -> None:
        while True:
            try:
                for row in await self.store.active():
                    if row.id not in self.running and len(self.running) < MAX_RUNNING:
                        self._start(row.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: wait
                log.warning("curations paused", extra={"error": repr(exc)[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()

    def _start(self, curation_id: str) -> None:
        task = asyncio.create_task(self.run(curation_id))
        self.running[curation_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self.running.pop(curation_id, None)
            self.wake.set()  # a slot is free

        task.add_done_callback(forget)

    async def run(self, curation_id: str) -> None:
        try:
            await self._run(curation_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if await self.store.state(curation_id) != jobs_pb2.JOB_STATE_RUNNING:
                # Cancelled (or deleted) under it: drop what it collected and wrote.
                await self.store.finish(curation_id, jobs_pb2.JOB_STATE_CANCELLED, self.clock())
                return
            if _passing(exc):
                log.warning("curation paused", extra={"curation_id": curation_id})
                await asyncio.sleep(self.interval)
                return  # still running: picked up again on the next round
            if isinstance(exc, ServiceError):
                message = exc.message
            elif isinstance(exc, grpc.aio.AioRpcError):
                remote = RemoteError.from_rpc_error(exc)
                message = f"the datasets service refused the rows: {remote.message}"
            else:
                log.exception("curation failed", extra={"curation_id": curation_id})
                message = "internal error; the eval service's log has the details"
            await self.store.finish(
                curation_id, jobs_pb2.JOB_STATE_FAILED, self.clock(), error=message
            )

    async def _run(self, curation_id: str) -> None:
        row = await self.store.start(curation_id, self.clock())
        if row is None:
            return
        request = request_of(row)
        progress = progress_of(row)
        if not row.collected and not await self._collect(row, request, progress):
            return
        await self.store.restart_writing(row.id)  # rows of a write that was cut off
        await self._write(row, request, progress)

    # Collecting

    async def _collect(
        self, row: CurationRow, request: cpb.CreateCurationRequest, progress: cpb.CurationProgress
    ) -> bool:
        """Read every span; False when the job stopped being active meanwhile. The next page
        is asked for while this one is judged and stored, so the tracing service's reading
        and ours overlap."""
        seq = progress.spans_read

        def page(token: str) -> asyncio.Task[tuple[list[pb.Span], str]]:
            return asyncio.create_task(self.tracing.spans(row.owner, request.filter, token, PAGE))

        ahead = page(row.page_token)
        try:
            while True:
                spans, next_token = await ahead
                if next_token:
                    ahead = page(next_token)
                found = await verdicts(self.db, row.owner, request.conditions, spans)
                candidates = []
                for span in spans:
                    seq += 1
                    verdict = found[(span.trace_id, span.span_id)]
                    candidate = candidate_of(span, seq, verdict, request, progress)
                    if candidate is not None:
                        candidates.append(candidate)
                state = await self.store.collected_page(
                    row.id, candidates, next_token, progress, self.clock(), last=not next_token
                )
                if state != jobs_pb2.JOB_STATE_RUNNING:
                    return False
                if not next_token:
                    return True
        finally:
            if not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    # Writing

    async def _write(
        self, row: CurationRow, request: cpb.CreateCurationRequest, progress: cpb.CurationProgress
    ) -> None:
        options = request.options
        margin = options.margin if options.HasField("margin") else DEFAULT_MARGIN
        cap = options.max_per_session
        dpo = request.format == cpb.CURATION_FORMAT_DPO
        splits = [False, True] if options.eval_fraction > 0 else [False]
        progress.duplicates = progress.over_session_cap = progress.unpaired = 0
        progress.rows = progress.eval_rows = 0
        for holdout in splits:
            if dpo:
                inputs, pairs, capped = await self.store.dpo_counts(row.id, holdout, margin, cap)
                progress.unpaired += inputs - pairs
                progress.over_session_cap += pairs - capped
            else:
                matched, deduped, capped = await self.store.sft_counts(
                    row.id, holdout, options.dedupe, cap
                )
                progress.duplicates += matched - deduped
                progress.over_session_cap += deduped - capped

        def rows(holdout: bool) -> AsyncIterator[Selected]:
            if dpo:
                return self.store.dpo_rows(row.id, holdout, margin, cap)
            return self.store.sft_rows(row.id, holdout, options.dedupe, cap)

        if row.dry_run:
            sample_size = min(options.sample_size or DEFAULT_SAMPLE, 50)
            sample: list[dict[str, Any]] = []
            for holdout in splits:
                counter = _Lines(self, row.id, holdout, dpo, progress, record=False)
                async for line in counter.of(rows(holdout)):
                    if len(sample) < sample_size:
                        sample.append(orjson.loads(line))
            await self.store.finish(
                row.id, jobs_pb2.JOB_STATE_SUCCEEDED, self.clock(), progress=progress, sample=sample
            )
            return
        made: list[str] = []
        try:
            for holdout in splits:
                writer = _Lines(self, row.id, holdout, dpo, progress, record=True)
                lines = writer.of(rows(holdout))
                first = await anext(lines, None)
                if first is None:  # no row: no dataset (an empty file is refused)
                    if holdout:
                        continue
                    raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, _nothing(progress))
                name = eval_name(row.name) if holdout else row.name
                failed: list[Exception] = []
                try:
                    dataset = await self.datasets.upload(
                        row.owner, name, _chunks(first, lines, failed)
                    )
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    # grpc cancels the call when the rows' iterator raises: the reason is ours.
                    if failed:
                        raise failed[0] from None
                    raise
                made.append(dataset.id)
                if dataset.format == datasets_pb2.DATASET_FORMAT_INVALID:
                    # e.g. a conversation longer than the datasets service takes in one line
                    error = dataset.format_error
                    raise ServiceError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"the datasets service cannot train on the rows: {error.reason}",
                    )
            ended = await self.store.finish(
                row.id,
                jobs_pb2.JOB_STATE_SUCCEEDED,
                self.clock(),
                progress=progress,
                dataset_ids=(made[0], made[1] if len(made) > 1 else ""),
            )
        except BaseException:
            for dataset_id in made:
                await self.datasets.delete(row.owner, dataset_id)
            raise
        if not ended:  # cancelled just as it finished: nothing of it is kept
            for dataset_id in made:
                await self.datasets.delete(row.owner, dataset_id)

    async def stop(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


def _passing(error: BaseException) -> bool:
    """A service away for a while: the job waits and goes on, it does not fail."""
    if isinstance(error, ServiceError):
        return error.code == grpc.StatusCode.UNAVAILABLE
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


async def _chunks(
    first: str, rest: AsyncIterator[str], failed: list[Exception]
) -> AsyncIterator[bytes]:
    """JSONL lines in chunks of about CHUNK_BYTES; an error reading the rows (a cancel, the
    database away) is kept in `failed`, as grpc reports it only as the call cancelled."""
    buffer = bytearray(first.encode())
    buffer += b"\n"
    try:
        async for line in rest:
            buffer += line.encode()
            buffer += b"\n"
            if len(buffer) >= CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
    except Exception as exc:
        failed.append(exc)
        raise
    if buffer:
        yield bytes(buffer)


def _nothing(progress: cpb.CurationProgress) -> str:
    return (
        f"no row to write: {progress.spans_read} spans read, {progress.spans_matched} met the "
        f"conditions ({progress.unjudged} unjudged, {progress.unusable} with no chat input or "
        f"output, {progress.flagged} with errors or warnings, {progress.unpaired} inputs with no "
        "pair): widen the filter or the conditions, or judge more spans first"
    )


def candidate_of(
    span: pb.Span,
    seq: int,
    verdict: Any,
    request: cpb.CreateCurationRequest,
    progress: cpb.CurationProgress,
) -> Candidate | None:
    """The span as a candidate, counted in `progress`; None when it cannot make a row."""
    progress.spans_read += 1
    options = request.options
    if not options.keep_flagged and (
        span.status == pb.SPAN_STATUS_ERROR or len(span.flags.warnings)
    ):
        progress.flagged += 1
        return None
    prompt = chat_input(_value(span, "input"))
    answer = chat_output(_value(span, "output"))
    if prompt is None or answer is None:
        progress.unusable += 1
        return None
    if not verdict.judged:
        progress.unjudged += 1
    if verdict.meets and (verdict.judged or request.format == cpb.CURATION_FORMAT_SFT):
        progress.spans_matched += 1
    if request.format == cpb.CURATION_FORMAT_DPO:
        if not verdict.judged:
            return None  # no score to compare
    elif not verdict.meets:
        return None
    key = input_key(prompt)
    answers = [answer]
    if options.scrub:
        masked: Counter[str] = Counter()
        prompt, found = scrub_messages(prompt)
        masked.update(found)
        answers, found = scrub_messages(answers)
        masked.update(found)
        for kind, count in masked.items():
            progress.masked[kind] += count
    session = span.session.session_id
    session_key = f"s:{session}" if session else f"t:{span.trace_id}/{span.span_id}"
    if len(session_key) > 255:
        session_key = "h:" + input_key([{"role": "user", "content": session_key}])
    return Candidate(
        seq=seq,
        input_key=key,
        session_key=session_key,
        score=verdict.score,
        meets=verdict.meets,
        holdout=_holdout(key, options.eval_fraction),
        trace_id=span.trace_id,
        span_id=span.span_id,
        prompt=_dumps(prompt),
        answer=_dumps(answers[0]),
    )


class _Lines:
    """A split's rows as JSONL lines, each recorded with the trace and span it came from."""

    def __init__(
        self,
        curator: Curator,
        curation_id: str,
        holdout: bool,
        dpo: bool,
        progress: cpb.CurationProgress,
        *,
        record: bool,
    ) -> None:
        self.curator = curator
        self.curation_id = curation_id
        self.holdout = holdout
        self.dpo = dpo
        self.progress = progress
        self.record = record
        self.line = 0
        self.pending: list[tuple[Any, ...]] = []

    def _line(self, selected: Selected) -> str | None:
        chosen, rejected = selected.chosen, selected.rejected
        if rejected is None:
            # The prompt's JSON array with the answer as its last item.
            return f'{{"messages":{chosen.prompt[:-1]},{chosen.answer}]}}'
        if chosen.answer == rejected.answer:  # judged apart, answered alike: nothing to prefer
            self.progress.unpaired += 1
            return None
        return (
            f'{{"prompt":{chosen.prompt},"chosen":[{chosen.answer}],'
            f'"rejected":[{rejected.answer}]}}'
        )

    async def of(self, selected: AsyncIterator[Selected]) -> AsyncIterator[str]:
        async for item in selected:
            line = self._line(item)
            if line is None:
                continue
            self.line += 1
            if self.holdout:
                self.progress.eval_rows += 1
            else:
                self.progress.rows += 1
            if self.record:
                self.pending.append(self._provenance(item))
                if len(self.pending) >= PROVENANCE_BATCH:
                    await self._flush()
            yield line
        await self._flush()

    def _provenance(self, item: Selected) -> tuple[Any, ...]:
        """The row's provenance, as add_provenance takes it."""
        chosen, rejected = item.chosen, item.rejected
        return (
            self.holdout,
            self.line,
            chosen.trace_id,
            chosen.span_id,
            chosen.score,
            rejected.trace_id if rejected else "",
            rejected.span_id if rejected else "",
            rejected.score if rejected else None,
        )

    async def _flush(self) -> None:
        if not self.pending:
            return
        if not await self.curator.store.add_provenance(self.curation_id, self.pending):
            raise Cancelled(self.curation_id)
        self.pending = []
