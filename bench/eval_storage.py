"""Validators with storage: `python -m bench validators --storage [--traces N] [--concurrency C]
[--backends postgresql sqlite]`.

The tracing and the eval service run in this process on real gRPC ports, each on a fresh
database of the backend (tests/contract/eval_fixtures.py: the contract tests' own suite, so the
services are assembled exactly as they are there). --traces traces (default 10,000), each one
LLM span with a question, a synthetic answer (bench/validators.py's: 20 to 400 words, one in
four JSON), a model, a session and token counts, are judged by 8 validators: contains
(case-insensitive), not_contains, regex, pii, refusal, char_length, output_tokens (the span's
usage) and rouge_l against a fixed reference (about half the judgments pass).

Evaluate   The traces ingested first (untimed), then Evaluate on each from --concurrency callers
           (default 16) in flight at once: the service's GetTrace, the validators, the judgment
           and its checks stored, AnnotateSpan onto the span, the judgment marked annotated.
           Judgments/s, after an untimed warm-up of 32.
Rule       A rule (CreateRule, sampling 1.0, the same validators) created for another user, then
           --traces new traces ingested for that user; judgments/s from the first span sent to
           the last judgment stored (GetRule's spans_judged, polled). The rule judges at the
           eval service's own concurrency (rule_concurrency, default 8), a page of 200 new
           spans at a time.
Baselines  measured in the same run, each printed beside both figures as a ratio:
  pure     the same 8 validators (the service's own parse of the same request) over the
           subjects the service builds from the same spans, in this process: what the
           validators alone cost, so the ratio is the share left after RPCs and storage.
  Core     the judgments the Evaluate run stored (a `judgments` row and 8 `judgment_checks`
           rows each), read back 500 at a time and written with a plain SQLAlchemy Core
           `insert()` into a fresh eval database: 500 judgments a transaction (what the
           database alone can take), and, as a second line, one judgment a transaction from
           --concurrency callers (the service's own write pattern, without the rest).
Memory stays bounded: traces are generated as they are sent, subjects 1,000 at a time, the
baseline's rows 500 at a time, and only counters are kept. PostgreSQL databases are created
with asyncpg and dropped at the end (TUNELAB_BENCH_PG_URL: the admin URL, as bench tracing);
SQLite files live in a temporary directory. Figures go to bench/results/validators-storage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from sqlalchemy import insert, select

from bench.suite import BenchError, callers, run_and_report
from bench.tracing import Backend
from bench.validators import answer
from services.common.db import Database
from services.common.errors import ServiceError
from services.eval.models import Base, CheckRow, JudgmentRow
from services.eval.plan import parse_validators
from services.eval.service import MIGRATIONS as EVAL_MIGRATIONS
from services.eval.subjects import choose_span, judged
from services.eval.validators import evaluate
from tests.conftest import new_user
from tests.contract.eval_fixtures import Suite, eval_suite, span
from tunelab.eval.v1 import eval_service_pb2 as api
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import spans_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = "What is the capital of France, and when was it founded?"
REFERENCE = (
    "The capital of France is Paris; it was founded long before 1200 and a river runs through it."
)
VALIDATORS: list[dict[str, Any]] = [
    {"kind": "contains", "params": {"value": "paris", "case_sensitive": False}},
    {"kind": "not_contains", "params": {"value": "Lyon"}},
    {"kind": "regex", "params": {"pattern": r"\b\d{4}\b"}},
    {"kind": "pii", "weight": 2},
    {"kind": "refusal"},
    {"kind": "char_length", "params": {"max": 2500}},
    {"kind": "output_tokens", "params": {"max": 300}},
    {"kind": "rouge_l", "params": {"reference": REFERENCE}, "threshold": 0.15},
]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4"]
WARM = 32
BATCH = 500
SUBJECT_CHUNK = 1000
POLL_S = 0.2
STALL_S = 120.0
ATTEMPTS = 6
T = TypeVar("T")
JUDGMENTS = Base.metadata.tables[JudgmentRow.__tablename__]
CHECKS = Base.metadata.tables[CheckRow.__tablename__]


# ---------------------------------------------------------------- traces and subjects


def traces(prefix: str, count: int, seed: int = 11) -> Iterator[pb.Span]:
    """`count` one-span traces, generated as they are consumed (seeded: the same every run)."""
    rng = random.Random(seed)
    for index in range(count):
        text = answer(rng, index)
        yield span(
            f"{prefix}{index:06d}",
            "llm",
            start_ms=index,
            kind="SPAN_KIND_LLM",
            model=MODELS[index % len(MODELS)],
            session={"session_id": f"{prefix}-session-{index // 10}"},
            input=[{"role": "user", "content": QUESTION}],
            output=[{"role": "assistant", "content": text}],
            usage={"input_tokens": 14, "output_tokens": len(text.split())},
        )


def chunks(items: Iterator[pb.Span], size: int) -> Iterator[list[pb.Span]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def request_template() -> api.EvaluateRequest:
    return json_format.ParseDict({"validators": VALIDATORS}, api.EvaluateRequest())


def pure_rate(count: int) -> float:
    """Judgments/s of the validators alone on the subjects the service builds from the spans."""
    configs = parse_validators(request_template().validators)
    elapsed = 0.0
    for chunk in chunks(traces("p", count), SUBJECT_CHUNK):
        subjects = [judged([s], choose_span([s], "", s.trace_id), None).subject for s in chunk]
        evaluate(configs, subjects[0])  # warm (compiled patterns, caches)
        started = time.perf_counter()
        for subject in subjects:
            evaluate(configs, subject)
        elapsed += time.perf_counter() - started
    return count / elapsed


class Retry:
    """Calls retried on UNAVAILABLE with backoff, as any client of the services retries: it is
    what SQLite answers when its write lock was waited for longer than the busy timeout (5 s),
    which a loaded machine makes happen. The retries are counted and reported."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The call's answer, and whether it took more than one attempt."""
        for attempt in range(ATTEMPTS):
            error: Exception
            try:
                return await call(), attempt > 0
            except grpc.aio.AioRpcError as exc:
                code, detail, error = exc.code(), exc.details(), exc
            except ServiceError as exc:
                code, detail, error = exc.code, exc.message, exc
            if code != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS - 1:
                raise BenchError(f"{what}: {code.name}: {detail}") from error
            self.count += 1
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("not reached")


async def ingest(
    suite: Suite, spans: Iterator[pb.Span], retry: Retry, user: str | None = None
) -> None:
    for chunk in chunks(spans, BATCH):
        await retry("IngestSpans", lambda: suite.ingest(chunk, user))  # noqa: B023 (awaited here)


# ---------------------------------------------------------------- the service


async def evaluate_path(suite: Suite, count: int, concurrency: int, retry: Retry) -> dict[str, Any]:
    await ingest(suite, traces("e", WARM + count), retry)
    template = request_template()
    passed = 0

    async def judge(trace_id: str) -> None:
        nonlocal passed
        request = api.EvaluateRequest()
        request.CopyFrom(template)
        request.trace_id = trace_id
        reply, again = await retry(
            f"Evaluate {trace_id}",
            lambda: suite.eval.Evaluate(request, metadata=suite.as_(), timeout=60),
        )
        # A retried call may find the judgment its first attempt stored (idempotence).
        if not (reply.created or again) or reply.judgment.status != jpb.JUDGMENT_STATUS_COMPLETE:
            raise BenchError(f"{trace_id}: not a new complete judgment: {reply.judgment}")
        passed += reply.judgment.passed

    ids = (f"e{index:06d}" for index in range(WARM + count))
    await callers(itertools.islice(ids, WARM), WARM, judge)
    passed = 0
    started = time.perf_counter()
    await callers(ids, concurrency, judge)
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 2), "judgments_s": round(count / elapsed), "passed": passed}


async def rule_path(suite: Suite, count: int, retry: Retry) -> dict[str, Any]:
    user = new_user()
    request = json_format.ParseDict(
        {"name": "bench", "validators": VALIDATORS, "sampling_rate": 1.0},
        api.CreateRuleRequest(),
    )
    rule = (await suite.eval.CreateRule(request, metadata=suite.as_(user))).rule
    started = time.perf_counter()
    await ingest(suite, traces("r", count), retry, user)
    ingested = time.perf_counter() - started
    judged_count, progress_at, seen = 0, time.perf_counter(), 0
    while judged_count < count:
        await asyncio.sleep(POLL_S)
        shown, _ = await retry(
            "GetRule",
            lambda: suite.eval.GetRule(
                api.GetRuleRequest(rule_id=rule.id), metadata=suite.as_(user), timeout=10
            ),
        )
        seen = shown.rule.spans_seen
        if shown.rule.spans_judged > judged_count:
            judged_count, progress_at = shown.rule.spans_judged, time.perf_counter()
        elif time.perf_counter() - progress_at > STALL_S:
            raise BenchError(f"the rule judged {judged_count} of {count}, then nothing more")
    if judged_count != count:
        raise BenchError(f"the rule made {judged_count} judgments of {count} traces")
    elapsed = progress_at - started
    return {
        "seconds": round(elapsed, 2),
        "ingest_seconds": round(ingested, 2),
        "judgments_s": round(count / elapsed),
        "concurrency": suite.settings.rule_concurrency,
        "spans_seen": seen,
    }


# ---------------------------------------------------------------- the database alone


# A judgment's row and its checks' rows, as column values.
Rows = tuple[dict[str, Any], list[dict[str, Any]]]


async def stored(db: Database, owner: str) -> AsyncIterator[list[Rows]]:
    """The owner's judgments with their checks' rows, BATCH at a time, in id order."""
    after = ""
    while True:
        async with db.session() as session:
            rows = (
                await session.execute(
                    select(JUDGMENTS)
                    .where(JUDGMENTS.c.owner == owner, JUDGMENTS.c.id > after)
                    .order_by(JUDGMENTS.c.id)
                    .limit(BATCH)
                )
            ).all()
            if not rows:
                return
            checks: dict[str, list[dict[str, Any]]] = {row.id: [] for row in rows}
            for check in await session.execute(
                select(CHECKS).where(CHECKS.c.judgment_id.in_(list(checks)))
            ):
                checks[check.judgment_id].append(dict(check._mapping))
        yield [(dict(row._mapping), checks[row.id]) for row in rows]
        after = rows[-1].id


async def core_baselines(
    backend: Backend, source_url: str, owner: str, concurrency: int, retry: Retry
) -> dict[str, Any]:
    source = Database(source_url)
    bulk = Database(await backend.fresh("bulk", EVAL_MIGRATIONS))
    single = Database(await backend.fresh("single", EVAL_MIGRATIONS))

    async def insert_one(judgment: dict[str, Any], checks: list[dict[str, Any]]) -> None:
        async with single.session(write=True) as session:
            await session.execute(insert(JUDGMENTS), [judgment])
            await session.execute(insert(CHECKS), checks)

    async def one(rows: Rows) -> None:
        await retry("insert", lambda: insert_one(*rows))

    bulk_s = single_s = 0.0
    count = 0
    try:
        async for batch in stored(source, owner):
            count += len(batch)
            started = time.perf_counter()
            async with bulk.session(write=True) as session:
                await session.execute(insert(JUDGMENTS), [j for j, _ in batch])
                await session.execute(insert(CHECKS), [c for _, cs in batch for c in cs])
            bulk_s += time.perf_counter() - started
            started = time.perf_counter()
            await callers(batch, concurrency, one)
            single_s += time.perf_counter() - started
    finally:
        for db in (source, bulk, single):
            await db.close()
    return {
        "judgments": count,
        "bulk_judgments_s": round(count / bulk_s),
        "single_judgments_s": round(count / single_s),
    }


# ---------------------------------------------------------------- a backend, the report


async def one_backend(kind: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(kind, tmp)
    retry = Retry()
    try:
        urls = (await backend.fresh("tracing"), await backend.fresh("eval", EVAL_MIGRATIONS))
        print(f"{kind}: the validators alone ...", flush=True)
        pure = await asyncio.to_thread(pure_rate, args.traces)
        async with eval_suite(urls) as suite:
            print(f"{kind}: Evaluate over {args.traces:,} traces ...", flush=True)
            evaluated = await evaluate_path(suite, args.traces, args.concurrency, retry)
            print(f"{kind}: a rule following {args.traces:,} new traces ...", flush=True)
            followed = await rule_path(suite, args.traces, retry)
            owner = suite.user
        print(f"{kind}: Core inserts of the stored judgments ...", flush=True)
        core = await core_baselines(backend, urls[1], owner, args.concurrency, retry)
    finally:
        await backend.drop()
    if core["judgments"] != args.traces + WARM:
        raise BenchError(f"{core['judgments']} judgments stored, expected {args.traces + WARM}")
    for figure in (evaluated, followed):
        figure["ratio_pure"] = round(figure["judgments_s"] / pure, 4)
        figure["ratio_core"] = round(figure["judgments_s"] / core["bulk_judgments_s"], 4)
    return {
        "pure_judgments_s": round(pure),
        "evaluate": evaluated,
        "rule": followed,
        "core": core,
        "unavailable_retried": retry.count,
    }


def table(results: dict[str, Any]) -> str:
    out = [
        f"validators with storage: {len(VALIDATORS)} validators x {results['traces']:,} traces "
        f"(one LLM span each); Evaluate {results['concurrency']} in flight; tracing and eval "
        f"services in this process; {results['seconds']:.0f} s in all on {results['cpus']} "
        f"CPUs (load average {results['load_average']:.1f} at the start)"
    ]
    for kind, r in results["backends"].items():
        pure, core = r["pure_judgments_s"], r["core"]
        out.append(f"== {kind}")
        for name, f in (("evaluate", r["evaluate"]), ("rule", r["rule"])):
            out.append(
                f"{name:9} service {f['judgments_s']:7,}/s   pure validators {pure:7,}/s  "
                f"ratio {f['ratio_pure']:.3f}   Core bulk insert {core['bulk_judgments_s']:7,}/s  "
                f"ratio {f['ratio_core']:.3f}"
            )
        ev, rule = r["evaluate"], r["rule"]
        out.append(f"          evaluate: {ev['seconds']:.1f} s, {ev['passed']:,} passed")
        out.append(
            f"          rule: all judged {rule['seconds']:.1f} s after the first span sent "
            f"(ingest done at {rule['ingest_seconds']:.1f} s), rule concurrency "
            f"{rule['concurrency']}, {rule['spans_seen']:,} spans read from the feed"
        )
        out.append(
            f"Core      {core['judgments']:,} judgments (+ {len(VALIDATORS)} check rows each): "
            f"{BATCH} a transaction {core['bulk_judgments_s']:,}/s; one a transaction from "
            f"{results['concurrency']} callers {core['single_judgments_s']:,}/s"
        )
        out.append(f"          UNAVAILABLE retried (all calls above): {r['unavailable_retried']}")
    return "\n".join(out)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "traces": args.traces,
        "concurrency": args.concurrency,
        "validators": VALIDATORS,
        "backends": {},
    }
    for kind in args.backends:
        results["backends"][kind] = await one_backend(kind, tmp, args)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench validators --storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traces", type=int, default=10_000, help="default 10,000")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="Evaluate calls in flight (default 16)"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"]
    )
    args = parser.parse_args(argv)
    if args.traces <= 0 or args.concurrency <= 0:
        parser.error("the counts must be positive")
    return run_and_report(
        "bench validators --storage",
        lambda tmp: run(args, tmp),
        table,
        RESULTS / "validators-storage.json",
    )
