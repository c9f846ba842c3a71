"""Load test: `make load` (python -m bench load [--clients 50] [--seconds 60] [--slow 200]).

The whole suite as `make run` starts it (`tunelab dev`, on free ports, SQLite by default or
PostgreSQL with --postgres), loaded on loopback by concurrent clients mixing dataset listing,
downloads by token, span ingest, trace queries and deployment reads. The measured time is cut
in two halves: in the second, `--slow` more connections send request headers one byte a second
(slowloris), reconnecting whenever the server closes them.

Printed: per route the count, p50 and p99 and the answers that were not 2xx; throughput; the
5xx count; each process's RSS before and after (with its own children: the tracing service's
ingest workers), the "before" taken after a warm-up of the same load so that first-use growth
is not counted; and what the slow connections got. Exit status 1 when any answer was a 5xx, a
process's RSS grew more than 20%, or the slow connections took more than half the throughput
of the ordinary clients (compared between the halves). Everything stops by itself.

The abuse limits are lifted for the run (the clients are one address, one user per client):
this measures the system, not the limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.suite import BenchError, Suite
from bench.tracing import PG_ADMIN_URL

USERS = 5
LINKS_PER_USER = 10
RSS_GROWTH_LIMIT = 1.2
UNLIMITED = {
    "TUNELAB_GATEWAY_PUBLIC_RATE_LIMIT": "100000000/minute",
    "TUNELAB_GATEWAY_PUBLIC_REFUSED_RATE_LIMIT": "100000000/minute",
    "TUNELAB_GATEWAY_USER_RATE_LIMIT": "100000000/minute",
    "TUNELAB_GATEWAY_MAX_STREAMS_PER_USER": "100000",
}


@dataclass
class Seeded:
    """What the clients work on, per user: a token and the ids they read."""

    tokens: list[str]
    downloads: list[list[str]]
    traces: list[list[str]]
    deployments: list[list[str]]


@dataclass
class Tally:
    """Answers by route: latencies of the 2xx, counts of the rest."""

    ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    other: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    count: int = 0

    def add(self, route: str, answer: str, ms: float) -> None:
        self.count += 1
        if answer.startswith("2"):
            self.ms[route].append(ms)
        else:
            self.other[route][answer] = self.other[route].get(answer, 0) + 1

    def server_errors(self) -> int:
        return sum(n for by in self.other.values() for a, n in by.items() if a.startswith("5"))

    def with_status(self, status: str) -> int:
        return sum(by.get(status, 0) for by in self.other.values())


@dataclass
class Slow:
    opened: int = 0
    closed_by_server: int = 0
    seconds_held: list[float] = field(default_factory=list)


def spans(trace: str, count: int) -> list[dict[str, object]]:
    return [
        {
            "trace_id": trace,
            "span_id": f"s{i}-{secrets.token_hex(3)}",
            "name": "chat",
            "kind": "llm",
            "model": random.choice(["gpt-4o", "claude-3-5-haiku", "llama-3-8b"]),
            "timing": {"start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T10:00:01Z"},
            "usage": {"input_tokens": 900, "output_tokens": 150},
            "input": {"messages": [{"role": "user", "content": "What is 2 plus 2?"}]},
            "output": {"text": "4"},
        }
        for i in range(count)
    ]


def dataset_body(rows: int) -> bytes:
    row = b'{"messages": [{"role": "user", "content": "What is 2 plus 2?"}, '
    row += b'{"role": "assistant", "content": "2 plus 2 is 4."}]}\n'
    return row * rows


async def seed(suite: Suite, client: httpx.AsyncClient) -> Seeded:
    seeded = Seeded([], [], [], [])
    for user in range(USERS):
        token = suite.token(user=f"load-{user}")
        headers = {"Authorization": f"Bearer {token}"}
        uploaded = await client.post(
            "/v1/datasets",
            params={"name": f"load-{user}.jsonl"},
            content=dataset_body(3000),  # about 330 KB
            headers=headers,
        )
        dataset_id = _ok(uploaded)["id"]
        links = [
            await client.post(
                f"/v1/datasets/{dataset_id}/download-tokens",
                json={"max_uses": 1000},  # the most a link allows
                headers=headers,
            )
            for _ in range(LINKS_PER_USER)
        ]
        traces = [f"seed-{user}-{i}" for i in range(20)]
        for trace in traces:
            _ok(
                await client.post(
                    "/v1/traces/spans", json={"spans": spans(trace, 10)}, headers=headers
                )
            )
        run = {
            "provider": "local",
            "dataset_id": dataset_id,
            "method": "sft",
            "hyperparameters": {"max_steps": 5},
            "limits": {"max_runtime_minutes": 10, "max_cost_usd": 1},
        }
        created = await client.post("/v1/deployments", json=run, headers=headers)
        seeded.tokens.append(token)
        seeded.downloads.append([_ok(link)["url"].removeprefix(suite.url) for link in links])
        seeded.traces.append(traces)
        seeded.deployments.append([_ok(created)["id"]])
    return seeded


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise BenchError(
            f"seeding: {response.request.url.path}: {response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


async def one_request(
    client: httpx.AsyncClient, seeded: Seeded, rng: random.Random
) -> tuple[str, httpx.Response]:
    """One request of the mix, as (route, answer)."""
    user = rng.randrange(USERS)
    auth = {"Authorization": f"Bearer {seeded.tokens[user]}"}
    pick = rng.random()
    if pick < 0.20:
        return "GET /v1/datasets", await client.get("/v1/datasets", headers=auth)
    if pick < 0.35:
        link = rng.choice(seeded.downloads[user])
        return "GET /v1/dataset-downloads/{token}", await client.get(link)
    if pick < 0.55:
        trace = f"load-{user}-{rng.randrange(1_000_000)}"
        body = {"spans": spans(trace, 20)}
        return "POST /v1/traces/spans", await client.post(
            "/v1/traces/spans", json=body, headers=auth
        )
    if pick < 0.70:
        params = {"model": rng.choice(["gpt-4o", "llama-3-8b"]), "page_size": "50"}
        return "GET /v1/traces", await client.get("/v1/traces", params=params, headers=auth)
    if pick < 0.80:
        trace = rng.choice(seeded.traces[user])
        return "GET /v1/traces/{trace_id}", await client.get(f"/v1/traces/{trace}", headers=auth)
    if pick < 0.90:
        return "GET /v1/deployments", await client.get("/v1/deployments", headers=auth)
    deployment = seeded.deployments[user][0]
    return "GET /v1/deployments/{id}", await client.get(
        f"/v1/deployments/{deployment}", headers=auth
    )


async def client_loop(
    client: httpx.AsyncClient, seeded: Seeded, until: float, tally: Tally | None, seed: int
) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        started = loop.time()
        try:
            route, response = await one_request(client, seeded, rng)
            answer = str(response.status_code)
        except httpx.HTTPError as exc:
            route, answer = "(transport)", type(exc).__name__
        if tally is not None:
            tally.add(route, answer, (loop.time() - started) * 1000)


async def slow_connection(port: int, until: float, slow: Slow) -> None:
    """Headers a byte a second, over and over: a new connection whenever one is closed."""
    loop = asyncio.get_running_loop()
    request = b"GET /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n" * 100
    while loop.time() < until:
        opened = loop.time()
        slow.opened += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in request:
                if loop.time() >= until or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(4096), 1.0) == b"" or reader.at_eof():
                        break
        except ConnectionError:
            pass
        finally:
            writer.close()
        if loop.time() < until:
            slow.closed_by_server += 1
            slow.seconds_held.append(loop.time() - opened)


async def phase(
    suite: Suite, seeded: Seeded, clients: int, seconds: float, tally: Tally | None
) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=suite.url, limits=limits, timeout=30) as client:
        until = asyncio.get_running_loop().time() + seconds
        await asyncio.gather(
            *(client_loop(client, seeded, until, tally, n) for n in range(clients))
        )


async def run(args: argparse.Namespace, root: Path) -> int:
    env = dict(UNLIMITED)
    databases: list[str] = []
    if args.postgres:
        databases = await create_databases()
        env |= {
            f"TUNELAB_{service}_DATABASE_URL": url
            for service, url in zip(("DATASETS", "DEPLOY", "TRACING"), databases, strict=True)
        }
    suite = Suite(root, env)
    try:
        suite.start()
        async with httpx.AsyncClient(base_url=suite.url, timeout=60) as client:
            seeded = await seed(suite, client)
        print(f"seeded {USERS} users; warming up for {args.warmup:g} s ...", flush=True)
        await phase(suite, seeded, args.clients, args.warmup, None)
        before = suite.rss_mib()
        halves = [Tally(), Tally()]
        slow = Slow()
        half = args.seconds / 2
        print(
            f"{args.clients} clients for {half:g} s, "
            f"then {half:g} s beside {args.slow} slow connections ...",
            flush=True,
        )
        await phase(suite, seeded, args.clients, half, halves[0])
        until = asyncio.get_running_loop().time() + half
        slowloris = [
            asyncio.create_task(slow_connection(suite.port, until, slow)) for _ in range(args.slow)
        ]
        await phase(suite, seeded, args.clients, half, halves[1])
        await asyncio.gather(*slowloris)
        after = suite.rss_mib()
    finally:
        suite.stop()
        if databases:
            await drop_databases(databases)
    return report(halves, half, slow, before, after)


def report(
    halves: list[Tally], half: float, slow: Slow, before: dict[str, float], after: dict[str, float]
) -> int:
    both = Tally()
    for tally in halves:
        for route, values in tally.ms.items():
            both.ms[route] += values
        for route, answers in tally.other.items():
            for answer, n in answers.items():
                both.other[route][answer] = both.other[route].get(answer, 0) + n
        both.count += tally.count
    print(f"\n{'route':40} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}  not 2xx")
    for route in sorted(set(both.ms) | set(both.other)):
        values = sorted(both.ms.get(route, []))
        others = both.other.get(route, {})
        count = len(values) + sum(others.values())
        p50, p99 = (_pct(values, 50), _pct(values, 99)) if values else (0.0, 0.0)
        print(f"{route:40} {count:7d} {p50:8.1f} {p99:8.1f}  {dict(others) or ''}")
    rates = [t.count / half for t in halves]
    p99s = [_pct(sorted(v for vs in t.ms.values() for v in vs), 99) for t in halves]
    print(
        f"\nthroughput: {both.count / (2 * half):.0f} requests/s "
        f"(without slow connections {rates[0]:.0f}/s, p99 {p99s[0]:.0f} ms; "
        f"with them {rates[1]:.0f}/s, p99 {p99s[1]:.0f} ms; "
        f"ratio {rates[1] / max(rates[0], 1e-9):.2f})"
    )
    errors, limited = both.server_errors(), both.with_status("429")
    print(f"5xx: {errors}   429: {limited}")
    held = statistics.median(slow.seconds_held) if slow.seconds_held else 0.0
    print(
        f"slow connections: {slow.opened} opened, {slow.closed_by_server} closed by the server "
        f"after a median {held:.1f} s"
    )
    print("\nRSS (MiB, with child processes), after warm-up -> at the end:")
    grew = []
    for name in sorted(after):
        ratio = after[name] / before[name] if before.get(name) else float("inf")
        print(f"  {name:10} {before.get(name, 0):8.1f} -> {after[name]:8.1f}  ({ratio:.2f}x)")
        if ratio > RSS_GROWTH_LIMIT:
            grew.append(name)
    failed = []
    if errors:
        failed.append(f"{errors} server errors")
    if grew:
        failed.append(f"RSS grew more than {RSS_GROWTH_LIMIT - 1:.0%}: {', '.join(grew)}")
    if rates[1] < rates[0] / 2:
        failed.append("the slow connections halved the throughput")
    print(f"\n{'FAILED: ' + '; '.join(failed) if failed else 'passed'}")
    return 1 if failed else 0


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


async def create_databases() -> list[str]:
    admin = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    names = [f"tunelab_load_{service}_{secrets.token_hex(4)}" for service in ("ds", "dep", "tr")]
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return [admin.set(database=name).render_as_string(hide_password=False) for name in names]


async def drop_databases(urls: list[str]) -> None:
    admin = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        for url in urls:
            await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await conn.close()


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n")[0])
    parse.add_argument("--clients", type=int, default=50)
    parse.add_argument("--seconds", type=float, default=60, help="measured time (two halves)")
    parse.add_argument("--warmup", type=float, default=5)
    parse.add_argument("--slow", type=int, default=200, help="slow connections, second half")
    parse.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    return parse


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="tunelab-load-") as tmp:
            return asyncio.run(run(args, Path(tmp)))
    except BenchError as exc:
        print(f"bench load: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
