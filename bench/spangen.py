"""Synthetic, seeded LLM traces for the tracing benchmark, and the fast loaders that store them.

A trace is a root agent span and four children (retrieval, LLM call, tool, LLM call), spread
over the seven days before `now`. Spans come as the proto-JSON dicts a producer sends
(`producer`) or completed as the service stores them (`row`): computed fields added, the body
the JSON of the whole span, the columns derived from it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.tracing.prices import PriceTable

MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1-mini", "openai"),
    ("claude-sonnet-4", "anthropic"),
    ("claude-3-5-haiku", "anthropic"),
    ("gemini-2.0-flash", "google"),
]
MODEL_WEIGHTS = [35, 20, 15, 15, 10, 5]
TAGS = [f"{kind}-{n}" for kind in ("team", "experiment", "customer", "feature") for n in range(5)]
ERRORS = [("rate_limit", "429 Too Many Requests"), ("timeout", "deadline exceeded")]
ERRORS += [("server_error", "502 Bad Gateway")]
WARNINGS = ["context_truncated", "slow_first_token", "fallback_model"]
SPAN_WINDOW = timedelta(days=7)
SPANS_PER_TRACE = 5
KIND_NUMBERS = {
    "SPAN_KIND_LLM": 1,
    "SPAN_KIND_RETRIEVAL": 3,
    "SPAN_KIND_TOOL": 5,
    "SPAN_KIND_AGENT": 7,
}
STATUS_NUMBERS = {"SPAN_STATUS_OK": 1, "SPAN_STATUS_ERROR": 2}
COLUMNS = [
    "id", "owner", "trace_id", "span_id", "parent_span_id", "is_root", "name", "kind", "status",
    "model", "provider", "error_category", "session_id", "start_time", "end_time", "duration_ms",
    "ttft_ms", "tokens_per_second", "input_tokens", "output_tokens", "cache_read_tokens",
    "cost_usd", "streaming", "has_warnings", "groundedness", "received_at", "updated_at", "body",
]  # fmt: skip
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "with", "as"]
    while len(words) < size:
        syllables = rng.randint(1, 4)
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        words.append(word + rng.choice(["", "", "", "", "", ",", "."]))
    return words


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Traces:
    """`count` spans (whole traces of five) with ids under `prefix`, seeded."""

    count: int
    now: datetime
    seed: int = 1234
    prefix: str = "t"

    @property
    def sessions(self) -> int:
        return max(1, self.count // 50)  # ten traces per session

    def producer(self) -> Iterator[dict[str, Any]]:
        """Spans as a producer sends them (proto JSON, nothing computed)."""
        rng = random.Random(self.seed)
        words = _vocabulary(rng)
        window_us = int(SPAN_WINDOW.total_seconds() * 1e6)
        made = 0
        trace_no = 0
        while made < self.count:
            trace_no += 1
            trace_id = f"{self.prefix}{self.seed:x}-{trace_no:010x}"
            start = self.now - timedelta(microseconds=rng.randrange(window_us))
            session = f"sess-{rng.randrange(self.sessions):08d}"
            user = f"user-{rng.randrange(5000):05d}"
            tags = rng.sample(TAGS, rng.randint(1, 3)) if rng.random() < 0.3 else []
            model, provider = rng.choices(MODELS, MODEL_WEIGHTS)[0]
            position = rng.randint(1, 20)
            question = " ".join(rng.choices(words, k=rng.randint(15, 50)))
            root_id = f"{trace_no:010x}-0"
            offsets = [0.0]
            children: list[dict[str, Any]] = []
            at = start + timedelta(milliseconds=rng.uniform(1, 5))
            for k, kind in enumerate(
                ("SPAN_KIND_RETRIEVAL", "SPAN_KIND_LLM", "SPAN_KIND_TOOL", "SPAN_KIND_LLM"), 1
            ):
                span, took = self._child(rng, words, kind, model, provider, question, at)
                span.update(
                    trace_id=trace_id,
                    span_id=f"{trace_no:010x}-{k}",
                    parent_span_id=root_id,
                    session={"session_id": session, "message_position": position},
                )
                if tags:
                    span["tags"] = tags
                children.append(span)
                at += timedelta(milliseconds=took + rng.uniform(0.5, 3))
                offsets.append(took)
            failed = any(c["status"] == "SPAN_STATUS_ERROR" for c in children)
            root: dict[str, Any] = {
                "trace_id": trace_id,
                "span_id": root_id,
                "parent_span_id": "",
                "name": "agent.answer",
                "kind": "SPAN_KIND_AGENT",
                "status": "SPAN_STATUS_ERROR" if failed else "SPAN_STATUS_OK",
                "timing": {"start_time": _stamp(start), "end_time": _stamp(at)},
                "session": {
                    "session_id": session,
                    "message_position": position,
                    "end_user_id": user,
                },
                "input": {"question": question},
                "metadata": {"app": "support-bot", "release": f"1.{trace_no % 7}.0"},
            }
            if tags:
                root["tags"] = tags
            for span in [root, *children]:
                if made < self.count:
                    made += 1
                    yield span

    def _child(
        self,
        rng: random.Random,
        words: list[str],
        kind: str,
        model: str,
        provider: str,
        question: str,
        start: datetime,
    ) -> tuple[dict[str, Any], float]:
        span: dict[str, Any] = {"kind": kind, "status": "SPAN_STATUS_OK"}
        if kind == "SPAN_KIND_RETRIEVAL":
            took = rng.lognormvariate(3.5, 0.5)
            span |= {
                "name": "vector.search",
                "rag": {
                    "retrieval_latency_ms": round(took, 3),
                    "chunks_retrieved": 8,
                    "chunks_used": rng.randint(2, 8),
                },
                "input": {"query": question},
            }
        elif kind == "SPAN_KIND_TOOL":
            took = rng.lognormvariate(4, 0.8)
            span |= {
                "name": "tool.lookup_order",
                "input": {"order_id": f"ord-{rng.randrange(10**8):08d}"},
                "output": {"state": rng.choice(["shipped", "pending", "delivered"])},
            }
        else:
            ttft = rng.lognormvariate(5.8, 0.5)
            output_tokens = rng.randint(20, 600)
            took = ttft + output_tokens * rng.uniform(8, 25)
            input_tokens = rng.randint(200, 4000)
            span |= {
                "name": "chat.completions",
                "model": model,
                "provider": provider,
                "usage": {
                    "input_tokens": str(input_tokens),
                    "output_tokens": str(output_tokens),
                    "cache_read_input_tokens": str(rng.choice([0, 0, input_tokens // 2])),
                },
                "request": {
                    "api_endpoint": "/v1/chat/completions",
                    "base_url": f"https://api.{provider}.example",
                    "provider_request_id": f"req_{rng.getrandbits(64):016x}",
                    "http_status": 200,
                },
                "input": {
                    "messages": [
                        {"role": "system", "content": "You are a helpful support assistant."},
                        {"role": "user", "content": question},
                    ]
                },
                "output": {
                    "role": "assistant",
                    "content": " ".join(rng.choices(words, k=rng.randint(20, 60))),
                },
            }
            timing: dict[str, Any] = {"time_to_first_token_ms": round(ttft, 3)}
            span["timing"] = timing
            if rng.random() < 0.6:
                span["streaming"] = {"enabled": True, "chunk_count": output_tokens // 4 + 1}
            else:
                span["streaming"] = {"enabled": False}
            if rng.random() < 0.3:
                span["evaluation"] = {"groundedness_score": round(rng.random(), 3)}
            if rng.random() < 0.05:
                span["flags"] = {"warnings": [rng.choice(WARNINGS)]}
            if rng.random() < 0.03:
                category, message = rng.choice(ERRORS)
                span |= {
                    "status": "SPAN_STATUS_ERROR",
                    "error_category": category,
                    "status_message": message,
                }
                span["request"]["http_status"] = 429 if category == "rate_limit" else 502
                del span["output"]
        timing = span.setdefault("timing", {})
        timing["start_time"] = _stamp(start)
        timing["end_time"] = _stamp(start + timedelta(milliseconds=took))
        return span, took


def _parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def row(span: dict[str, Any], owner: str, row_id: int, prices: PriceTable) -> dict[str, Any]:
    """The span completed as the service completes it (computed fields), and its columns."""
    timing = span["timing"]
    start, end = _parse(timing["start_time"]), _parse(timing["end_time"])
    computed = ["timing.duration_ms"]
    timing["duration_ms"] = (end - start).total_seconds() * 1000
    usage = span.get("usage")
    cost = None
    if usage:
        tokens_in, tokens_out = int(usage["input_tokens"]), int(usage["output_tokens"])
        usage["total_tokens"] = str(tokens_in + tokens_out)
        seconds = (timing["duration_ms"] - timing.get("time_to_first_token_ms", 0)) / 1000
        timing["tokens_per_second"] = tokens_out / seconds
        priced = prices.cost(
            span["model"],
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cache_read_tokens=int(usage["cache_read_input_tokens"]),
        )
        computed += ["usage.total_tokens", "timing.tokens_per_second"]
        if priced is not None:
            cost = round(priced[0] + priced[1], 10)
            span["cost"] = {
                "total_usd": cost,
                "input_usd": round(priced[0], 10),
                "output_usd": round(priced[1], 10),
            }
            computed += ["cost.total_usd", "cost.input_usd", "cost.output_usd"]
    span["computed"] = computed
    received = end + timedelta(milliseconds=50)
    span["received_at"] = _stamp(received)
    streaming = span.get("streaming", {}).get("enabled")
    return {
        "id": row_id,
        "owner": owner,
        "trace_id": span["trace_id"],
        "span_id": span["span_id"],
        "parent_span_id": span["parent_span_id"],
        "is_root": not span["parent_span_id"],
        "name": span["name"],
        "kind": KIND_NUMBERS[span["kind"]],
        "status": STATUS_NUMBERS[span["status"]],
        "model": span.get("model", ""),
        "provider": span.get("provider", ""),
        "error_category": span.get("error_category", ""),
        "session_id": span["session"]["session_id"],
        "start_time": start,
        "end_time": end,
        "duration_ms": timing["duration_ms"],
        "ttft_ms": timing.get("time_to_first_token_ms"),
        "tokens_per_second": timing.get("tokens_per_second"),
        "input_tokens": int(usage["input_tokens"]) if usage else None,
        "output_tokens": int(usage["output_tokens"]) if usage else None,
        "cache_read_tokens": int(usage["cache_read_input_tokens"]) if usage else None,
        "cost_usd": cost,
        "streaming": streaming,
        "has_warnings": bool(span.get("flags", {}).get("warnings")),
        "groundedness": span.get("evaluation", {}).get("groundedness_score"),
        "received_at": received,
        "updated_at": received,
        "body": orjson.dumps(span).decode(),
        "_tags": list(span.get("tags", ())),
    }


def rows(traces: Traces, owner: str, batch: int = 10_000) -> Iterator[list[dict[str, Any]]]:
    """Completed rows with ids 1.., in batches."""
    prices = PriceTable.load(None)
    found: list[dict[str, Any]] = []
    for row_id, span in enumerate(traces.producer(), 1):
        found.append(row(span, owner, row_id, prices))
        if len(found) >= batch:
            yield found
            found = []
    if found:
        yield found


async def load_postgres(dsn: str, traces: Traces, owner: str) -> tuple[int, int]:
    """COPY the rows in, secondary indexes dropped first and built after; (spans, tags)."""
    conn = await asyncpg.connect(dsn)
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename IN ('spans', 'span_tags') AND indexname LIKE 'ix_%'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        spans = tags = 0
        for batch in rows(traces, owner):
            await conn.copy_records_to_table(
                "spans", records=[[r[c] for c in COLUMNS] for r in batch], columns=COLUMNS
            )
            tag_records = [(r["id"], tag, owner) for r in batch for tag in r["_tags"]]
            await conn.copy_records_to_table(
                "span_tags", records=tag_records, columns=["span_row_id", "tag", "owner"]
            )
            spans += len(batch)
            tags += len(tag_records)
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("SELECT setval('spans_id_seq', (SELECT max(id) FROM spans))")
        await conn.execute("VACUUM ANALYZE spans")
        await conn.execute("VACUUM ANALYZE span_tags")
        return spans, tags
    finally:
        await conn.close()


def load_sqlite(path: str, traces: Traces, owner: str) -> tuple[int, int]:
    """executemany in one transaction, secondary indexes dropped first and built after."""
    import sqlite3

    def sql_time(when: datetime | None) -> str | None:  # as SQLAlchemy stores UTCDateTime
        return None if when is None else when.replace(tzinfo=None).isoformat(" ", "microseconds")

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-500000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_%'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("BEGIN")
        spans = tags = 0
        marks = ", ".join("?" * len(COLUMNS))
        times = {"start_time", "end_time", "received_at", "updated_at"}
        for batch in rows(traces, owner):
            conn.executemany(
                f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES ({marks})",  # noqa: S608
                [[sql_time(r[c]) if c in times else r[c] for c in COLUMNS] for r in batch],
            )
            tag_records = [(r["id"], tag, owner) for r in batch for tag in r["_tags"]]
            conn.executemany(
                "INSERT INTO span_tags (span_row_id, tag, owner) VALUES (?, ?, ?)", tag_records
            )
            spans += len(batch)
            tags += len(tag_records)
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return spans, tags
    finally:
        conn.close()
