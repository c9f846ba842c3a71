"""Curation throughput: `python -m bench curation [--traces N] [--backends postgresql sqlite]`.

The tracing, eval and datasets services run in this process on real gRPC ports, each on a
fresh database of the backend (the datasets service stores its bytes in a temporary directory).
--traces one-span traces (default 100,000) are ingested first, untimed: half as many questions,
each answered twice in a session of ten (a system and a user turn in, an assistant turn out),
and a judgment stored for each answer as the eval service stores one (a `judgments` row and its
check), one answer of each question passing with score 1 and the other failing with 0. On
PostgreSQL the databases are then ANALYZEd, as autovacuum would have done on a database in use.

Timed, each from CreateCuration to the curation's `succeeded` (GetCuration polled every 0.1 s):
  sft   the passing answers (conditions: passed): one row per question;
  dpo   each question's passing answer against its failing one (margin 0.5): one pair each.
Each figure is rows/s and spans read/s (every span is read, judged or not).

Baseline, measured in the same run and printed beside each figure as a ratio: ListSpans alone,
the same filter (LLM spans) paged through 500 at a time as the curation pages, spans/s: the
floor of reading the spans, before judgments are looked up, rows made and written.
Figures go to bench/results/curation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from sqlalchemy import insert, text

from bench.eval_storage import Retry, ingest
from bench.suite import BenchError, run_and_report
from bench.tracing import Backend
from services.common.db import Database
from services.common.server import start
from services.datasets.service import MIGRATIONS as DATASETS_MIGRATIONS
from services.datasets.service import server_spec as datasets_spec
from services.datasets.settings import DatasetsSettings
from services.eval.judgment_store import encode
from services.eval.models import Base, CheckRow, JudgmentRow
from services.eval.service import MIGRATIONS as EVAL_MIGRATIONS
from tests.conftest import INTERNAL_TOKEN
from tests.contract.eval_fixtures import Suite, eval_suite, span
from tunelab.eval.v1 import curations_pb2 as cpb
from tunelab.eval.v1 import jobs_pb2
from tunelab.eval.v1 import judgments_pb2 as jpb
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as tapi

RESULTS = Path(__file__).resolve().parent / "results"
JUDGMENTS = Base.metadata.tables[JudgmentRow.__tablename__]
CHECKS = Base.metadata.tables[CheckRow.__tablename__]
SYSTEM = "You are a concise travel assistant. Answer in one or two sentences."
PAGE = 500
JUDGMENT_BATCH = 1000


def traces(count: int) -> Iterator[pb.Span]:
    """Trace i answers question i // 2: well when i is even, badly when it is odd."""
    for index in range(count):
        question = f"Which city is landmark number {index // 2} in, and why is it famous?"
        answer = (
            f"Landmark {index // 2} is in Paris; it is famous for its view of the Seine."
            if index % 2 == 0
            else f"Landmark {index // 2} is on the Moon, I believe."
        )
        yield span(
            f"c{index:07d}",
            "llm",
            start_ms=index,
            kind="SPAN_KIND_LLM",
            model="gpt-4o",
            session={"session_id": f"session-{index // 10}"},
            input=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            output=[{"role": "assistant", "content": answer}],
            usage={"input_tokens": 40, "output_tokens": 16},
        )


async def store_judgments(url: str, owner: str, count: int) -> None:
    """A judgment per span, as JudgmentStore.add writes one, in batches (untimed setup)."""
    db = Database(url)
    now = datetime.now(UTC)
    try:
        for start_at in range(0, count, JUDGMENT_BATCH):
            judgments, checks = [], []
            for index in range(start_at, min(start_at + JUDGMENT_BATCH, count)):
                passed = index % 2 == 0
                judgment_id = f"jdg_bench{index:07d}"
                body = jpb.Judgment(
                    id=judgment_id,
                    trace_id=f"c{index:07d}",
                    span_id="llm",
                    score=1.0 if passed else 0.0,
                    passed=passed,
                )
                judgments.append(
                    {
                        "id": judgment_id,
                        "owner": owner,
                        "trace_id": f"c{index:07d}",
                        "span_id": "llm",
                        "session_id": f"session-{index // 10}",
                        "model": "gpt-4o",
                        "rule_id": "",
                        "config_key": "bench",
                        "attempt": 1,
                        "status": jpb.JUDGMENT_STATUS_COMPLETE,
                        "score": body.score,
                        "passed": passed,
                        "groundedness": None,
                        "trace_deleted": False,
                        "annotated": True,
                        "created_at": now,
                        "body": encode(body),
                    }
                )
                checks.append(
                    {
                        "judgment_id": judgment_id,
                        "name": "paris",
                        "owner": owner,
                        "kind": "contains",
                        "model": "gpt-4o",
                        "passed": passed,
                        "score": body.score,
                        "error": False,
                        "created_at": now,
                    }
                )
            async with db.session(write=True) as session:
                await session.execute(insert(JUDGMENTS), judgments)
                await session.execute(insert(CHECKS), checks)
    finally:
        await db.close()


async def analyze(*urls: str) -> None:
    """Table statistics, as autovacuum keeps them on a database in use: right after a bulk
    load PostgreSQL still plans for empty tables (a lookup of 500 judgments by trace then
    scans them all, 40 times slower)."""
    for url in urls:
        db = Database(url)
        try:
            async with db.session(write=True) as session:
                await session.execute(text("ANALYZE"))
        finally:
            await db.close()


async def list_rate(suite: Suite, count: int) -> float:
    """ListSpans alone over the same spans, a page of 500 at a time: spans/s."""
    where = tapi.SpanFilter(kind=pb.SPAN_KIND_LLM)
    token, read = "", 0
    started = time.perf_counter()
    while True:
        reply = await suite.tracing.ListSpans(
            tapi.ListSpansRequest(filter=where, page_size=PAGE, page_token=token),
            metadata=suite.as_(),
            timeout=60,
        )
        read += len(reply.spans)
        token = reply.next_page_token
        if not token:
            break
    elapsed = time.perf_counter() - started
    if read != count:
        raise BenchError(f"ListSpans read {read} spans, expected {count}")
    return read / elapsed


async def curate(suite: Suite, body: dict[str, Any]) -> tuple[cpb.Curation, float]:
    request = json_format.ParseDict(body, cpb.CreateCurationRequest())
    started = time.perf_counter()
    reply = await suite.eval.CreateCuration(request, metadata=suite.as_(), timeout=60)
    curation = reply.curation
    while curation.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING):
        await asyncio.sleep(0.1)
        curation = (
            await suite.eval.GetCuration(
                cpb.GetCurationRequest(curation_id=curation.id), metadata=suite.as_(), timeout=30
            )
        ).curation
    elapsed = time.perf_counter() - started
    if curation.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise BenchError(f"the curation ended {curation.state}: {curation.error}")
    return curation, elapsed


@contextlib.asynccontextmanager
async def datasets_service(url: str, storage: Path) -> AsyncIterator[str]:
    settings = DatasetsSettings(
        database_url=url,
        storage_dir=storage,
        blob_http_address="127.0.0.1:0",
        internal_token=INTERNAL_TOKEN,
        public_url="https://tunelab.example",
    )
    db = Database(url)
    running = await start(datasets_spec(settings, db, address="127.0.0.1:0"))
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop()
        await db.close()


async def one_backend(kind: str, tmp: Path, count: int) -> dict[str, Any]:
    backend = Backend(kind, tmp)
    retry = Retry()
    figures: dict[str, Any] = {}
    try:
        tracing_url = await backend.fresh("tracing")
        eval_url = await backend.fresh("eval", EVAL_MIGRATIONS)
        datasets_url = await backend.fresh("datasets", DATASETS_MIGRATIONS)
        async with (
            datasets_service(datasets_url, tmp / f"blobs-{kind}") as datasets,
            eval_suite((tracing_url, eval_url), datasets_address=datasets) as suite,
        ):
            print(f"{kind}: ingesting {count:,} traces and their judgments ...", flush=True)
            await ingest(suite, traces(count), retry)
            await store_judgments(eval_url, suite.user, count)
            if kind == "postgresql":
                await analyze(tracing_url, eval_url)
            print(f"{kind}: ListSpans alone ...", flush=True)
            listed = await list_rate(suite, count)
            figures["list_spans_s"] = round(listed)
            for name, body in (
                ("sft", {"format": "CURATION_FORMAT_SFT", "conditions": {"passed": True}}),
                (
                    "dpo",
                    {
                        "format": "CURATION_FORMAT_DPO",
                        "conditions": {"passed": True},
                        "options": {"margin": 0.5},
                    },
                ),
            ):
                print(f"{kind}: curating {name} ...", flush=True)
                curation, elapsed = await curate(suite, body)
                rows = curation.progress.rows
                if rows != count // 2 or curation.progress.spans_read != count:
                    raise BenchError(f"{name}: {curation.progress} (expected {count // 2} rows)")
                figures[name] = {
                    "seconds": round(elapsed, 2),
                    "rows": rows,
                    "rows_s": round(rows / elapsed),
                    "spans_read_s": round(count / elapsed),
                    "ratio": round(count / elapsed / listed, 4),
                }
    finally:
        await backend.drop()
    figures["unavailable_retried"] = retry.count
    return figures


def table(results: dict[str, Any]) -> str:
    out = [
        f"curation: {results['traces']:,} one-span traces ({results['traces'] // 2:,} questions "
        f"answered twice, each answer judged), tracing, eval and datasets services in this "
        f"process; {results['seconds']:.0f} s in all on {results['cpus']} CPUs (load average "
        f"{results['load_average']:.1f} at the start)"
    ]
    for kind, r in results["backends"].items():
        out.append(f"== {kind}")
        for name in ("sft", "dpo"):
            f = r[name]
            out.append(
                f"{name}   {f['rows_s']:7,} rows/s  {f['spans_read_s']:7,} spans read/s   "
                f"ListSpans alone {r['list_spans_s']:7,} spans/s   ratio {f['ratio']:.3f}   "
                f"({f['rows']:,} rows in {f['seconds']:.1f} s)"
            )
        out.append(f"      UNAVAILABLE retried (setup): {r['unavailable_retried']}")
    return "\n".join(out)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "traces": args.traces,
        "backends": {},
    }
    for kind in args.backends:
        results["backends"][kind] = await one_backend(kind, tmp, args.traces)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench curation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traces", type=int, default=100_000, help="default 100,000")
    parser.add_argument(
        "--backends", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"]
    )
    args = parser.parse_args(argv)
    if args.traces < 2 or args.traces % 2:
        parser.error("--traces must be an even number of at least 2")
    return run_and_report(
        "bench curation", lambda tmp: run(args, tmp), table, RESULTS / "curation.json"
    )
