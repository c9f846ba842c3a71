"""Tracing benchmark: the tracing service (`python -m services.tracing`, a subprocess) over gRPC,
on PostgreSQL and SQLite, each figure beside a baseline measured in the same run.

Ingest   IngestSpans batches of 1000 from 4 concurrent callers into an empty database, spans/s
         (after one untimed batch, on both sides: worker processes started, statements ready).
         Baseline (the limit): the same rows, read back from what the service stored, written
         with a plain SQLAlchemy Core `insert(spans table)` (RETURNING the ids and keys, then
         the span_tags rows) into a fresh database of the same kind, same batches, one transaction
         per batch, 4 callers on PostgreSQL, 1 on SQLite (one writer: more only wait). The
         ratio is the share of the database's own insert speed the service keeps (aim: 0.5).
         A batch the service answers UNAVAILABLE (SQLite busy) is retried and counted.
         --ingest-rounds rounds (service, then baseline, fresh databases), medians printed.
Load     --spans rows (default 1,000,000) written directly (PostgreSQL COPY, SQLite executemany
         in one transaction, secondary indexes built after), then ANALYZE: the figures below
         measure reads, so the data gets in by the fastest path. Not a figure of the service.
List     ListSpans first pages (page_size 50) of typical filters, p50/p95 over --list-runs
         calls. Baseline: the very query the service runs (store.conditions, same order and
         limit) through SQLAlchemy in this process on the same database, rows fetched: the
         ratio is the service's own overhead (gRPC, parsing bodies into protos).
Analytics GetAnalytics over every span, median of --runs. Baseline: one plain SELECT count(*),
         avg(duration_ms) GROUP BY the same group: the cost of touching the rows at all.
Export   ExportSpans of every span (JSONL, CSV), bytes counted and dropped, spans/s and MB/s;
         the service's RSS before and its peak (VmHWM, reset before each export) after, which
         must stay flat whatever the size. Baseline: the rows' `body` column read in the same
         order with a server-side cursor (`yield_per`), spans/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
from google.protobuf import json_format
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from bench import spangen
from bench.suite import BenchError, callers, free_port, peak_rss_mib
from services.common.client import open_channel
from services.common.db import Database
from services.common.identity import USER_KEY
from services.common.migrations import Migrations
from services.tracing.analytics import _group
from services.tracing.models import SPAN_TAGS, SPANS, SpanRow, SpanTagRow
from services.tracing.service import MIGRATIONS
from services.tracing.store import conditions
from tunelab.tracing.v1 import spans_pb2 as pb
from tunelab.tracing.v1 import tracing_service_pb2 as api
from tunelab.tracing.v1 import tracing_service_pb2_grpc as api_grpc

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TUNELAB_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TOKEN = "bench-internal-token-" + secrets.token_hex(16)
OWNER = "bench-user"
BATCH = 1000
CALLERS = 4
PAGE = 50
MIB = 1 << 20


# ---------------------------------------------------------------- databases and the service


class Backend:
    """Scratch databases of one kind: created migrated, dropped at the end."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.admin = make_url(PG_ADMIN_URL)
        self.created: list[str] = []

    async def _admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.admin.render_as_string(hide_password=False))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def fresh(self, label: str, migrations: Migrations = MIGRATIONS) -> str:
        """A new database at `migrations`' head (the tracing service's by default)."""
        if self.kind == "postgresql":
            name = f"tunelab_bench_{label}_{secrets.token_hex(4)}"
            await self._admin(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            url = self.admin.set(database=name).render_as_string(hide_password=False)
        else:
            url = f"sqlite:///{self.tmp / f'{label}-{secrets.token_hex(4)}.db'}"
        db = Database(url)
        try:
            await migrations.upgrade(db)
        finally:
            await db.close()
        return url

    async def drop(self) -> None:
        if self.created:
            await self._admin(
                *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in self.created)
            )
            self.created.clear()


class Service:
    """`python -m services.tracing` on a free port, its log (WARNING and up) in `log_path`."""

    def __init__(self, url: str, log_path: Path, workers: int | None = None) -> None:
        self.url = url
        self.workers = workers
        self.log_path = log_path
        self.address = f"127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self, wait_s: float = 60.0) -> api_grpc.TracingServiceAsyncStub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
        env |= {
            "TUNELAB_TRACING_DATABASE_URL": self.url,
            "TUNELAB_TRACING_GRPC_ADDRESS": self.address,
            "TUNELAB_TRACING_METRICS_ADDRESS": "",
            "TUNELAB_INTERNAL_TOKEN": TOKEN,
            "TUNELAB_LOG_LEVEL": "WARNING",
        }
        if self.workers is not None:
            env["TUNELAB_TRACING_INGEST_WORKERS"] = str(self.workers)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            [sys.executable, "-m", "services.tracing"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.channel = open_channel(self.address, TOKEN, timeout=3600)
        stub = api_grpc.TracingServiceStub(self.channel)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"the tracing service exited:\n{self.log_path.read_text()[-2000:]}"
                )
            try:
                await stub.ListSpans(api.ListSpansRequest(page_size=1), metadata=META, timeout=2)
                return stub
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
        raise BenchError(f"the tracing service was not ready after {wait_s:.0f} s")

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def reset_peak(self) -> None:
        """VmHWM back to the current RSS (Linux clear_refs 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"no VmRSS for pid {self.pid}")


META = ((USER_KEY, OWNER.encode()),)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# ---------------------------------------------------------------- ingest


async def ingest(
    backend: Backend, count: int, now: datetime, tmp: Path, rounds: int, workers: int | None
) -> dict[str, Any]:
    """Rounds of (service, then baseline), each into fresh databases; the medians. These
    machines' speed drifts by tens of percent from minute to minute: a round measures both
    sides within seconds of each other, and the median of rounds damps the drift."""
    # One batch more than counted, sent first and not timed (on either side): the service's
    # and the database's warm-up (worker processes started, statements prepared).
    traces = spangen.Traces(count + BATCH, now, seed=99, prefix="i")
    messages = [json_format.ParseDict(s, pb.Span()) for s in traces.producer()]
    warm_up, *requests = [
        api.IngestSpansRequest(spans=messages[i : i + BATCH])
        for i in range(0, len(messages), BATCH)
    ]
    done = [
        await _ingest_round(backend, warm_up, requests, count, tmp, workers) for _ in range(rounds)
    ]
    return {
        "spans": count,
        "rounds": done,
        "service_spans_s": round(statistics.median(r["service_spans_s"] for r in done)),
        "baseline_spans_s": round(statistics.median(r["baseline_spans_s"] for r in done)),
        "ratio": round(statistics.median(r["ratio"] for r in done), 3),
        "unavailable_retried": sum(r["unavailable_retried"] for r in done),
    }


async def _ingest_round(
    backend: Backend,
    warm_up: api.IngestSpansRequest,
    requests: list[api.IngestSpansRequest],
    count: int,
    tmp: Path,
    workers: int | None,
) -> dict[str, Any]:
    url = await backend.fresh("ingest")
    service = Service(url, tmp / f"service-{backend.kind}.log", workers)
    stub = await service.start()
    accepted = busy = 0

    async def send(request: api.IngestSpansRequest) -> None:
        nonlocal accepted
        nonlocal busy
        for attempt in range(5):
            try:
                reply = await stub.IngestSpans(request, metadata=META)
                break
            except grpc.aio.AioRpcError as exc:
                # SQLite: a batch that waited too long for the write lock; a client retries.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                    raise
                busy += 1
        if reply.rejected:
            raise BenchError(f"the service rejected spans: {reply.rejected[0]}")
        accepted += reply.accepted

    try:
        await send(warm_up)
        accepted = 0
        started = time.perf_counter()
        await callers(requests, CALLERS, send)
        service_s = time.perf_counter() - started
    finally:
        await service.stop()
    if accepted != count:
        raise BenchError(f"the service accepted {accepted} spans of {count}")

    # The same rows, as the service stored them, through a plain Core bulk insert.
    source = Database(url)
    try:
        async with source.session() as session:
            cols = [c for c in SpanRow.__table__.columns if c.name != "id"]
            stored = (await session.execute(select(SpanRow.id, *cols).order_by(SpanRow.id))).all()
            tags: dict[int, list[str]] = {}
            for span_row_id, tag in await session.execute(
                select(SpanTagRow.span_row_id, SpanTagRow.tag)
            ):
                tags.setdefault(span_row_id, []).append(tag)
    finally:
        await source.close()
    batches = [
        [
            ({c.name: r._mapping[c.name] for c in cols}, tags.get(r.id, []))
            for r in stored[i : i + BATCH]
        ]
        for i in range(0, len(stored), BATCH)
    ]
    target = Database(await backend.fresh("baseline"))

    async def write(batch: list[tuple[dict[str, Any], list[str]]]) -> None:
        async with target.session(write=True) as session:
            # RETURNING the keys too, matched back (asking SQLAlchemy for the ids in parameter
            # order costs SQLite one statement per row).
            new = await session.execute(
                insert(SPANS).returning(SPANS.c.id, SPANS.c.trace_id, SPANS.c.span_id),
                [values for values, _ in batch],
            )
            ids = {(r.trace_id, r.span_id): r.id for r in new}
            tag_rows = [
                {
                    "span_row_id": ids[(values["trace_id"], values["span_id"])],
                    "tag": t,
                    "owner": OWNER,
                }
                for values, ts in batch
                for t in ts
            ]
            if tag_rows:
                await session.execute(insert(SPAN_TAGS), tag_rows)

    try:
        await write(batches.pop(0))
        started = time.perf_counter()
        # SQLite has one writer: its limit is one caller (more only wait for the lock).
        await callers(batches, 1 if backend.kind == "sqlite" else CALLERS, write)
        baseline_s = time.perf_counter() - started
    finally:
        await target.close()
    await backend.drop()
    return {
        "service_spans_s": round(count / service_s),
        "baseline_spans_s": round(count / baseline_s),
        "ratio": round(baseline_s / service_s, 3),
        "unavailable_retried": busy,
    }


# ---------------------------------------------------------------- list, analytics, export


def list_filters(now: datetime, traces: spangen.Traces) -> dict[str, api.SpanFilter]:
    hour_ago = now - timedelta(hours=1)
    frm = api.SpanFilter()
    frm.start_time_from.FromDatetime(hour_ago)
    session = f"sess-{traces.sessions // 2:08d}"
    return {
        "no filter": api.SpanFilter(),
        "model": api.SpanFilter(model="gpt-4o"),
        "model+error": api.SpanFilter(model="gpt-4o", status=pb.SPAN_STATUS_ERROR),
        "min_duration 8s": api.SpanFilter(min_duration_ms=8000),
        "tag": api.SpanFilter(tags=["customer-3"]),
        "session": api.SpanFilter(session_id=session),
        "last hour": frm,
        "roots_only": api.SpanFilter(roots_only=True),
    }


async def lists(
    stub: api_grpc.TracingServiceAsyncStub,
    db: Database,
    filters: dict[str, api.SpanFilter],
    runs: int,
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, where in filters.items():
        query = (
            select(SpanRow.id, SpanRow.start_time, SpanRow.body)
            .where(*conditions(OWNER, where))
            .order_by(SpanRow.start_time.desc(), SpanRow.id.desc())
            .limit(PAGE + 1)
        )
        service: list[float] = []
        baseline: list[float] = []
        returned = 0
        for run in range(runs + 3):  # three warm-ups
            started = time.perf_counter()
            reply = await stub.ListSpans(
                api.ListSpansRequest(filter=where, page_size=PAGE), metadata=META
            )
            took = time.perf_counter() - started
            returned = len(reply.spans)
            started = time.perf_counter()
            async with db.session() as session:
                rows = (await session.execute(query)).all()
            base = time.perf_counter() - started
            if len(rows[:PAGE]) != returned:
                raise BenchError(f"list {name}: service {returned} spans, SQL {len(rows)}")
            if run >= 3:
                service.append(took * 1000)
                baseline.append(base * 1000)
        found[name] = {
            "rows": returned,
            "p50_ms": round(statistics.median(service), 2),
            "p95_ms": round(_quantile(service, 0.95), 2),
            "base_p50_ms": round(statistics.median(baseline), 2),
            "base_p95_ms": round(_quantile(baseline, 0.95), 2),
        }
    return found


async def analytics(
    stub: api_grpc.TracingServiceAsyncStub, db: Database, runs: int
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    groups = {
        "ungrouped": api.ANALYTICS_GROUP_UNSPECIFIED,
        "by model": api.ANALYTICS_GROUP_MODEL,
        "by hour": api.ANALYTICS_GROUP_HOUR,
    }
    for name, group_by in groups.items():
        group = _group(db, group_by)
        query = (
            select(group.label("grp"), func.count(), func.avg(SpanRow.duration_ms))
            .where(*conditions(OWNER, api.SpanFilter()))
            .group_by(group)
        )
        service: list[float] = []
        baseline: list[float] = []
        groups_seen = 0
        for _ in range(runs):
            started = time.perf_counter()
            reply = await stub.GetAnalytics(
                api.GetAnalyticsRequest(group_by=group_by), metadata=META
            )
            service.append(time.perf_counter() - started)
            groups_seen = len(reply.rows)
            started = time.perf_counter()
            async with db.session() as session:
                rows = (await session.execute(query)).all()
            baseline.append(time.perf_counter() - started)
            if len(rows) != groups_seen:
                raise BenchError(f"analytics {name}: {groups_seen} groups, SQL {len(rows)}")
        found[name] = {
            "groups": groups_seen,
            "service_s": round(statistics.median(service), 3),
            "baseline_s": round(statistics.median(baseline), 3),
        }
    return found


async def export(
    stub: api_grpc.TracingServiceAsyncStub, db: Database, service: Service, count: int
) -> dict[str, Any]:
    started = time.perf_counter()
    body_bytes = rows = 0
    async with db.engine.connect() as conn:
        result = await conn.stream(
            select(SpanRow.body)
            .where(SpanRow.owner == OWNER)
            .order_by(SpanRow.start_time, SpanRow.id)
            .execution_options(yield_per=5000)
        )
        async for (body,) in result:
            body_bytes += len(body)
            rows += 1
    baseline_s = time.perf_counter() - started
    if rows != count:
        raise BenchError(f"baseline read {rows} bodies, expected {count}")
    found: dict[str, Any] = {
        "baseline": {
            "spans_s": round(count / baseline_s),
            "mb_s": round(body_bytes / baseline_s / 1e6, 1),
        }
    }
    for name, fmt in (("jsonl", api.EXPORT_FORMAT_JSONL), ("csv", api.EXPORT_FORMAT_CSV)):
        service.reset_peak()
        rss_before = service.rss_mib()
        size = lines = 0
        started = time.perf_counter()
        async for chunk in stub.ExportSpans(
            api.ExportSpansRequest(format=fmt), metadata=META, timeout=3600
        ):
            size += len(chunk.data)
            lines += chunk.data.count(b"\n")
        took = time.perf_counter() - started
        expected = count + (fmt == api.EXPORT_FORMAT_CSV)
        if lines != expected:
            raise BenchError(f"export {name}: {lines} lines, expected {expected}")
        found[name] = {
            "seconds": round(took, 1),
            "spans_s": round(count / took),
            "mb_s": round(size / took / 1e6, 1),
            "mib": round(size / MIB),
            "rss_before_mib": round(rss_before, 1),
            "peak_rss_mib": round(peak_rss_mib(service.pid), 1),
            "ratio": round(baseline_s / took, 3),
        }
    return found


async def reads(
    backend: Backend, count: int, now: datetime, tmp: Path, runs: int, list_runs: int
) -> dict[str, Any]:
    traces = spangen.Traces(count, now)
    url = await backend.fresh("reads")
    started = time.perf_counter()
    if backend.kind == "postgresql":
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        spans, tags = await spangen.load_postgres(dsn, traces, OWNER)
    else:
        spans, tags = await asyncio.to_thread(
            spangen.load_sqlite, str(make_url(url).database), traces, OWNER
        )
    load_s = time.perf_counter() - started
    print(f"  loaded {spans:,} spans, {tags:,} tags in {load_s:.0f} s", flush=True)
    service = Service(url, tmp / f"service-{backend.kind}.log")
    db = Database(url)
    try:
        stub = await service.start()
        print("  list ...", flush=True)
        listed = await lists(stub, db, list_filters(now, traces), list_runs)
        print("  analytics ...", flush=True)
        summed = await analytics(stub, db, runs)
        print("  export ...", flush=True)
        exported = await export(stub, db, service, count)
    finally:
        await service.stop()
        await db.close()
        await backend.drop()
    return {
        "spans": spans,
        "tags": tags,
        "load_s": round(load_s, 1),
        "list": listed,
        "analytics": summed,
        "export": exported,
    }


# ---------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    out = [
        f"tracing benchmark: {results['spans']:,} spans stored, ingest of "
        f"{results['ingest_spans']:,} (batches of {BATCH}, {CALLERS} callers); "
        f"{results['seconds']:.0f} s in all"
    ]
    for kind, r in results["backends"].items():
        ing = r["ingest"]
        out.append(f"== {kind}")
        out.append(
            f"ingest     service {ing['service_spans_s']:8,} spans/s   Core insert "
            f"{ing['baseline_spans_s']:8,} spans/s   ratio {ing['ratio']:.2f}  (aim >= 0.5)  "
            f"UNAVAILABLE retried: {ing['unavailable_retried']}"
        )
        out.append(
            f"           medians of {len(ing['rounds'])} rounds; ratios "
            + ", ".join(f"{r['ratio']:.2f}" for r in ing["rounds"])
        )
        reads_ = r["reads"]
        out.append(
            f"load       {reads_['spans']:,} spans + {reads_['tags']:,} tags in "
            f"{reads_['load_s']:.0f} s (COPY / executemany: not a figure)"
        )
        out.append(
            f"{'list p50/p95 ms':18} {'service':>15} {'SQL alone':>15} {'ratio p95':>9}  rows"
        )
        for name, f in reads_["list"].items():
            out.append(
                f"  {name:16} {f['p50_ms']:7.1f}/{f['p95_ms']:7.1f} {f['base_p50_ms']:7.1f}/"
                f"{f['base_p95_ms']:7.1f} {f['p95_ms'] / max(f['base_p95_ms'], 1e-9):9.2f}  "
                f"{f['rows']}"
            )
        for name, f in reads_["analytics"].items():
            out.append(
                f"analytics {name:10} service {f['service_s']:7.2f} s   GROUP BY count/avg "
                f"{f['baseline_s']:6.2f} s   x{f['service_s'] / max(f['baseline_s'], 1e-9):.1f}"
                f"  ({f['groups']} groups)"
            )
        exp = reads_["export"]
        for name in ("jsonl", "csv"):
            f = exp[name]
            out.append(
                f"export {name:5} {f['seconds']:6.1f} s {f['spans_s']:7,} spans/s "
                f"{f['mb_s']:6.1f} MB/s "
                f"({f['mib']} MiB)  ratio {f['ratio']:.3f}  RSS {f['rss_before_mib']:.0f} -> peak "
                f"{f['peak_rss_mib']:.0f} MiB"
            )
        out.append(
            f"export baseline: body column via yield_per {exp['baseline']['spans_s']:,} spans/s "
            f"{exp['baseline']['mb_s']} MB/s"
        )
    return "\n".join(out)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "spans": args.spans,
        "ingest_spans": args.ingest_spans,
        "ingest_workers": args.ingest_workers,
        "backends": {},
    }
    for kind in args.backends:
        backend = Backend(kind, tmp)
        try:
            print(f"{kind}: ingest of {args.ingest_spans:,} spans ...", flush=True)
            ingested = await ingest(
                backend, args.ingest_spans, now, tmp, args.ingest_rounds, args.ingest_workers
            )
            print(f"{kind}: loading {args.spans:,} spans ...", flush=True)
            read = await reads(backend, args.spans, now, tmp, args.runs, args.list_runs)
        finally:
            await backend.drop()
        results["backends"][kind] = {"ingest": ingested, "reads": read}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench tracing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--spans",
        type=int,
        default=1_000_000,
        help="spans stored for the read figures (default 1,000,000)",
    )
    parser.add_argument(
        "--ingest-spans",
        type=int,
        default=100_000,
        help="spans sent through IngestSpans (default 100,000)",
    )
    parser.add_argument(
        "--ingest-rounds", type=int, default=3, help="ingest rounds, medians (default 3)"
    )
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=None,
        help="the service's TUNELAB_TRACING_INGEST_WORKERS (default: the service's own)",
    )
    parser.add_argument("--runs", type=int, default=3, help="analytics runs, median (default 3)")
    parser.add_argument(
        "--list-runs", type=int, default=50, help="calls per list filter (default 50)"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"]
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.spans, args.ingest_spans, args.ingest_rounds, args.runs, args.list_runs) < 1:
        print("bench tracing: the counts must be positive", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="tunelab-bench-tracing-") as tmp:
            try:
                results = asyncio.run(run(args, Path(tmp)))
            finally:
                _keep_logs(Path(tmp))
    except BenchError as exc:
        print(f"bench tracing: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench tracing: interrupted; cleaned up", file=sys.stderr)
        return 130
    print(table(results))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracing.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"(figures in {RESULTS / 'tracing.json'})")
    return 0


def _keep_logs(tmp: Path) -> None:
    for log in tmp.glob("service-*.log"):
        if log.stat().st_size:
            RESULTS.mkdir(exist_ok=True)
            kept = RESULTS / f"tracing-{log.name}"
            shutil.copyfile(log, kept)
            print(f"note: the service logged warnings or errors; see {kept}")


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt
