"""A span on its way in: checked field by field, merged with what is stored, completed with
what the producer left out, and sanitized before anything is kept.

`received` fields (what producers sent, merged part by part) are kept apart from `computed` ones
(listed in Span.computed), so a later part that brings, say, the end time recomputes the
duration instead of keeping the one computed from nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import redact
from services.common.remembered import Remembered
from services.common.sanitize import sanitize_text
from services.tracing.prices import PriceTable
from services.tracing.stored_json import NotFinite, parse_stored, stored_json
from tunelab.tracing.v1 import spans_pb2 as pb

MAX_SPAN_BYTES = 1024**2
MAX_TAGS = 32
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEX_ID = re.compile(r"[0-9a-fA-F._:-]+")
_JUDGMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EARLIEST = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
_TIME_SLACK = 86_400  # a producer's clock a day ahead is still believed
# The longest text each column may hold, by the message that holds it ("" is the span).
_TEXT_LIMITS: dict[str, dict[str, int]] = {
    "": {"name": 255, "model": 255, "provider": 64, "error_category": 64},
    "session": {"session_id": 255, "end_user_id": 255},
    "retries": {"reason": 255},
    "request": {"api_endpoint": 2048, "base_url": 2048, "provider_request_id": 255},
}
# Numbers that must be finite and not negative, by the message that holds them.
_AMOUNTS: dict[str, frozenset[str]] = {
    "timing": frozenset(
        {
            "duration_ms",
            "queue_time_ms",
            "inference_time_ms",
            "network_time_ms",
            "time_to_first_token_ms",
            "tokens_per_second",
        }
    ),
    "usage": frozenset(
        {
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "total_tokens",
        }
    ),
    "cost": frozenset({"total_usd", "input_usd", "output_usd"}),
    "retries": frozenset({"count"}),
    "streaming": frozenset({"chunk_count"}),
    "rag": frozenset(
        {
            "retrieval_latency_ms",
            "context_tokens",
            "chunks_retrieved",
            "chunks_used",
            "chunks_deduplicated",
            "rerank_latency_ms",
            "cache_hits",
        }
    ),
}
# The parts of a span whose fields are checked one by one.
_CHECKED_PARTS = _TEXT_LIMITS.keys() | _AMOUNTS.keys() | {"evaluation", "session"}


class Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def plausible_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def check_part(span: pb.Span, now: datetime) -> None:
    """What can be checked of one part on its own; Invalid names the first problem.

    Only the fields that are set are visited (ListFields): this runs for every span ingested.
    """
    if not _ID.fullmatch(span.trace_id):
        raise Invalid("trace_id", "trace_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    if not _ID.fullmatch(span.span_id):
        raise Invalid("span_id", "span_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    if span.parent_span_id and not _ID.fullmatch(span.parent_span_id):
        raise Invalid("parent_span_id", "parent_span_id must look like a span_id, or be empty")
    if span.parent_span_id == span.span_id:
        raise Invalid("parent_span_id", "a span cannot be its own parent")
    for name in ("trace_id", "span_id", "parent_span_id"):
        value = getattr(span, name)
        # Hex, dashes, dots and colons (W3C and UUID ids) spell no credential shape; only one of
        # this process's own secrets (an operator's hex token) could be made of them.
        plain = _HEX_ID.fullmatch(value) and not redact.holds_registered(value)
        if value and not plain and sanitize_text(value) != value:
            raise Invalid(name, f"{name} looks like a credential; ids are stored as they are")
    latest = int(now.timestamp()) + _TIME_SLACK
    limits = _TEXT_LIMITS[""]
    for field, value in span.ListFields():
        name = field.name
        if name in limits:
            if len(value) > limits[name]:
                raise Invalid(name, f"{name} is longer than {limits[name]} characters")
        elif name in _CHECKED_PARTS:
            _check_fields(name, value, latest)
    tags = span.tags
    if tags and (len(tags) > MAX_TAGS or any(not 0 < len(tag) <= 128 for tag in tags)):
        raise Invalid("tags", f"at most {MAX_TAGS} tags, each 1 to 128 characters")
    if span.ByteSize() > MAX_SPAN_BYTES:
        raise Invalid("", f"the span is larger than {MAX_SPAN_BYTES} bytes; trim its input/output")


def _check_fields(part: str, message: Message, latest: int) -> None:
    limits = _TEXT_LIMITS.get(part, {})
    amounts = _AMOUNTS.get(part, frozenset())
    for field, value in message.ListFields():
        name = field.name
        if name in amounts:
            if not math.isfinite(value) or value < 0:
                raise Invalid(f"{part}.{name}", f"{part}.{name} must be a finite number, 0 or more")
        elif name in limits:
            if len(value) > limits[name]:
                raise Invalid(
                    f"{part}.{name}", f"{part}.{name} is longer than {limits[name]} characters"
                )
        elif isinstance(value, Timestamp):
            # Whole seconds compared: no datetime is made, and none can overflow.
            if not (_EARLIEST <= value.seconds <= latest and 0 <= value.nanos < 1_000_000_000) or (
                value.seconds == latest and value.nanos
            ):
                raise Invalid(f"{part}.{name}", f"{part}.{name} is not a plausible time")
        elif name == "message_position":
            if value < 1:
                raise Invalid(f"{part}.{name}", "message_position counts from 1")
        elif name in ("groundedness_score", "eval_score"):
            if not 0 <= value <= 1:  # NaN too
                raise Invalid(f"{part}.{name}", f"{name} must be 0 to 1")
        elif name == "judgment_id":
            if not _JUDGMENT_ID.fullmatch(value):
                raise Invalid(
                    f"{part}.{name}", "judgment_id must be 1 to 64 characters of A-Z a-z 0-9 _ -"
                )
            if sanitize_text(value) != value:
                raise Invalid(f"{part}.{name}", "judgment_id looks like a credential")
        elif name == "scores":
            for key, score in value.items():
                if not 0 <= score <= 1:
                    raise Invalid(f"{part}.scores.{key}", "scores must be 0 to 1")


def check_whole(span: pb.Span, *, merged: bool = True) -> None:
    """What must hold of the span before it is stored. `merged`: made of several parts (or a
    part and the stored span), whose sizes add up; one part alone was measured already."""
    if merged and len(span.tags) > MAX_TAGS:
        raise Invalid("tags", f"the span's parts carry more than {MAX_TAGS} tags together")
    if merged and span.ByteSize() > MAX_SPAN_BYTES:
        raise Invalid("", f"the span's parts add up to more than {MAX_SPAN_BYTES} bytes")
    timing = span.timing
    if not timing.HasField("start_time"):
        raise Invalid("timing.start_time", "timing.start_time is required")
    start, end = timing.start_time, timing.end_time
    if timing.HasField("end_time") and (end.seconds, end.nanos) < (start.seconds, start.nanos):
        raise Invalid("timing.end_time", "timing.end_time is before timing.start_time")


def received(stored: pb.Span) -> pb.Span:
    """The stored span without what the service computed: what producers sent."""
    span = copy(stored)
    for path in stored.computed:
        owner, _, name = path.rpartition(".")
        try:
            _get(span, owner).ClearField(name)
        except (AttributeError, ValueError):
            continue  # not a path this service writes
    del span.computed[:]
    span.ClearField("received_at")
    return span


def copy(span: pb.Span) -> pb.Span:
    copied = pb.Span()
    copied.CopyFrom(span)
    return copied


def merge(earlier: pb.Span, later: pb.Span) -> pb.Span:
    """A span sent in parts: the later part's fields win; lists are united, in order."""
    merged = pb.Span()
    merged.CopyFrom(earlier)
    merged.MergeFrom(later)
    _unique(merged.tags)
    _unique(merged.flags.warnings)
    return merged


def complete(span: pb.Span, prices: PriceTable) -> None:
    """Fill in what the producer left out and can be derived; list it in span.computed."""
    done: list[str] = []
    timing, usage = span.timing, span.usage
    if (
        not timing.HasField("duration_ms")
        and timing.HasField("start_time")
        and timing.HasField("end_time")
    ):
        start, end = timing.start_time, timing.end_time
        nanos = (end.seconds - start.seconds) * 1_000_000_000 + (end.nanos - start.nanos)
        timing.duration_ms = nanos / 1e6
        done.append("timing.duration_ms")
    if (
        not usage.HasField("total_tokens")
        and usage.HasField("input_tokens")
        and usage.HasField("output_tokens")
    ):
        usage.total_tokens = usage.input_tokens + usage.output_tokens
        done.append("usage.total_tokens")
    if (
        not timing.HasField("tokens_per_second")
        and usage.HasField("output_tokens")
        and timing.HasField("duration_ms")
    ):
        # Generation time: from the first token when it is known.
        seconds = (timing.duration_ms - timing.time_to_first_token_ms) / 1000
        if seconds > 0 and usage.output_tokens > 0:
            timing.tokens_per_second = usage.output_tokens / seconds
            done.append("timing.tokens_per_second")
    if not span.cost.HasField("total_usd") and span.model and usage.HasField("input_tokens"):
        priced = prices.cost(
            span.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            cache_write_tokens=usage.cache_creation_input_tokens,
        )
        if priced is not None:
            span.cost.total_usd = round(priced[0] + priced[1], 10)
            done.append("cost.total_usd")
            if not span.cost.HasField("input_usd"):
                span.cost.input_usd = round(priced[0], 10)
                done.append("cost.input_usd")
            if not span.cost.HasField("output_usd"):
                span.cost.output_usd = round(priced[1], 10)
                done.append("cost.output_usd")
    span.computed.extend(done)


# The columns `stored_form` fills, in the order of its values.
ROW_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "is_root", "name", "kind", "status", "model",
    "provider", "error_category", "session_id", "start_time", "end_time", "duration_ms",
    "ttft_ms", "tokens_per_second", "input_tokens", "output_tokens", "cache_read_tokens",
    "cost_usd", "streaming", "has_warnings", "groundedness", "eval_score", "body",
)  # fmt: skip


@dataclass(frozen=True)
class Columns:
    """What a stored span's columns hold (ROW_COLUMNS, in order): its numbers, and its texts
    as sanitized; and its tags."""

    values: tuple[Any, ...]
    tags: list[str]


def stored_form(span: pb.Span) -> Columns:
    """The span's row: its body as JSON, credentials masked, and the columns lists read.
    Invalid when its free-form values hold a number JSON cannot (NaN, infinity)."""
    try:
        data = stored_json(span)
    except NotFinite as exc:
        raise Invalid(exc.field, str(exc)) from None
    body = orjson.dumps(data).decode()
    if _NUL in body:  # rare: one search of the whole body, at C speed, finds it
        data = _without_nul(data)
        body = orjson.dumps(data).decode()
    timing, usage, session = span.timing, span.usage, data.get("session", {})

    def opt(holder: Message, name: str) -> Any:
        return getattr(holder, name) if holder.HasField(name) else None

    return Columns(
        (
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            not span.parent_span_id,
            data.get("name", ""),
            span.kind,
            span.status,
            data.get("model", ""),
            data.get("provider", ""),
            data.get("error_category", ""),
            session.get("session_id", ""),
            _when(timing.start_time),
            _when(timing.end_time) if timing.HasField("end_time") else None,
            opt(timing, "duration_ms"),
            opt(timing, "time_to_first_token_ms"),
            opt(timing, "tokens_per_second"),
            opt(usage, "input_tokens"),
            opt(usage, "output_tokens"),
            opt(usage, "cache_read_input_tokens"),
            opt(span.cost, "total_usd"),
            opt(span.streaming, "enabled"),
            bool(span.flags.warnings),
            opt(span.evaluation, "groundedness_score"),
            opt(span.evaluation, "eval_score"),
            body,
        ),
        data.get("tags", []),
    )


# U+0000 as JSON writes it. PostgreSQL's text and JSON cannot hold the character, so it is
# stored as U+FFFD (the replacement character) on both backends: the span is kept, not refused.
_NUL = "\\u0000"


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when(stamp: Timestamp) -> datetime:
    """Timestamp.ToDatetime(tzinfo=UTC) (to the microsecond), at a fraction of the cost: the
    spans of a batch share their seconds, whose datetimes are remembered."""
    return _whole_second(stamp.seconds).replace(microsecond=stamp.nanos // 1000)


def _datetime_of(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


# The spans of a batch share their seconds.
_whole_second: Remembered[int, datetime] = Remembered(_datetime_of, 65_536)


def parse_body(body: str) -> pb.Span:
    return parse_stored(body)


def _get(message: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        message = getattr(message, part)
    return message


def _unique(items: Any) -> None:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    del items[:]
    items.extend(seen)
