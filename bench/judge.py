"""Judge benchmark: `python -m bench judge [--judgments N] [--latency S] [--concurrency C ...]`.

Throughput  JudgeClient.grade against the fake OpenAI endpoint (tests/fakes/openai_chat.py:
            a real loopback HTTP server in a thread of this process, checking every request
            and answer against OpenAI's published schema) that answers each request after
            --latency seconds (default 0.2), with the client's per-endpoint concurrency limit
            at each --concurrency (default 8 and 16). --judgments grades (default 25 per slot:
            25 waves) are started at once and queue for the slots; judgments/s over the whole
            run, after an untimed warm-up (connections open, the prompt code warm).
            Baseline (the ideal): concurrency / latency, every slot always busy with nothing
            but the endpoint's own wait. The ratio is the share of that ideal the client keeps:
            what it loses is its own work per call (prompt, JSON, parsing, the schema checks of
            the fake in the same process) and the gaps between a slot's calls.
            Per-call latency p50/p99 (from a slot taken to the grade back) beside --latency.
Bare HTTP   The same request body (the prompt, response_format json_schema) posted with plain
            httpx by the same number of workers, the answer's JSON decoded and nothing else:
            what the loopback HTTP and the fake cost on their own. judge/bare is the client's
            own overhead (prompt, retries' bookkeeping, semaphore, strict parsing, the record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from services.eval.judge import JudgeClient, JudgeEndpoint
from services.eval.judge.prompts import grade_prompt
from tests.fakes.openai_chat import FakeOpenAIChat

RESULTS = Path(__file__).resolve().parent / "results"
RUBRIC = "Score how correct, complete and concise the output is for the input."
INPUT = "What is the capital of France, and which river runs through it?"
OUTPUT = "Paris is the capital of France. The Seine runs through it."
CONTEXT = ["Paris is the capital and largest city of France.", "The Seine flows through Paris."]


async def _run(fake: FakeOpenAIChat, concurrency: int, judgments: int) -> dict[str, Any]:
    endpoint = JudgeEndpoint(fake.base_url, "gpt-4o-mini", fake.api_key, vetted=True)
    async with JudgeClient(concurrency=concurrency) as judge:

        async def one() -> float:
            grade = await judge.grade(endpoint, RUBRIC, INPUT, OUTPUT, CONTEXT)
            if grade.error:
                raise SystemExit(f"the judge failed: {grade.error}: {grade.error_detail}")
            return grade.latency_ms

        await asyncio.gather(*(one() for _ in range(concurrency)))  # untimed warm-up
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one() for _ in range(judgments)))
        elapsed = time.perf_counter() - started
    rate = judgments / elapsed
    ideal = concurrency / fake.latency
    bare = await _bare(fake, concurrency, judgments)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency,
        "judgments": judgments,
        "seconds": round(elapsed, 3),
        "judgments_s": round(rate, 2),
        "ideal_judgments_s": round(ideal, 2),
        "ratio": round(rate / ideal, 3),
        "bare_http_s": round(bare, 2),
        "ratio_to_bare": round(rate / bare, 3),
        "latency_p50_ms": round(cuts[49], 1),
        "latency_p99_ms": round(cuts[98], 1),
        "max_in_flight": fake.max_in_flight,
    }


async def _bare(fake: FakeOpenAIChat, concurrency: int, requests: int) -> float:
    """Requests/s of plain httpx posting the judge's request body with `concurrency` workers."""
    prompt = grade_prompt(RUBRIC, INPUT, OUTPUT, CONTEXT, (1, 10))
    body = {
        "model": "gpt-4o-mini",
        "messages": list(prompt.messages),
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": prompt.schema_name, "strict": True, "schema": prompt.schema},
        },
    }
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    left = list(range(requests))
    async with httpx.AsyncClient(timeout=30) as http:

        async def worker() -> None:
            while left:
                left.pop()
                answer = await http.post(
                    f"{fake.base_url}/chat/completions", json=body, headers=headers
                )
                answer.raise_for_status()
                answer.json()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench judge", description=__doc__)
    parser.add_argument("--judgments", type=int, default=0, help="per level (default 25 x C)")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args(argv)
    if args.judgments < 0 or args.latency <= 0 or min(args.concurrency) < 1:
        parser.error("the counts and the latency must be positive")
    runs = []
    with FakeOpenAIChat(latency=args.latency).serve() as fake:
        for concurrency in args.concurrency:
            fake.reset()
            runs.append(asyncio.run(_run(fake, concurrency, args.judgments or 25 * concurrency)))
        fake.check()
    print(
        f"judge benchmark: grades against the fake OpenAI endpoint answering in {args.latency:g} s"
    )
    for run in runs:
        print(
            f"concurrency {run['concurrency']:3}  {run['judgments']:5,} grades  "
            f"{run['judgments_s']:7.2f}/s   ideal {run['ideal_judgments_s']:7.2f}/s   "
            f"ratio {run['ratio']:.3f}   per call p50 {run['latency_p50_ms']:.0f} ms "
            f"p99 {run['latency_p99_ms']:.0f} ms"
        )
        print(
            f"{'':18}bare HTTP {run['bare_http_s']:7.2f}/s   judge/bare {run['ratio_to_bare']:.3f}"
            f"   (at most {run['max_in_flight']} requests in flight at the fake)"
        )
    RESULTS.mkdir(exist_ok=True)
    figures = {"latency_s": args.latency, "runs": runs}
    (RESULTS / "judge.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"(figures in {RESULTS / 'judge.json'})")
    return 0
