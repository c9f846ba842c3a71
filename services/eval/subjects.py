"""What is judged in a trace: which span, and its texts and numbers as the checks see them.

Producers record inputs and outputs in many shapes: a plain string, OpenAI chat messages,
OpenTelemetry GenAI messages with `parts`, OpenInference's `{"message": {...}}` items, a
completion's `choices`. The texts are read out of all of these; what fits none is judged as its
compact JSON. The context of a RAG answer is what the trace's retrieval spans returned, plus
any `context` / `contexts` / `documents` the judged span's input carries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format

from services.common.errors import not_found
from services.eval.validators import Subject
from tunelab.tracing.v1 import spans_pb2 as pb

# Keys that hold the text itself, in the order they are looked for.
_TEXT_KEYS = ("content", "text", "page_content", "output", "answer", "completion", "response")
_INPUT_KEYS = ("prompt", "input", "question", "query", "content", "text")
_CONTEXT_KEYS = ("context", "contexts", "documents", "retrieved_contexts")
# A list of documents joined into one chunk at most this long each.
MAX_CHUNK_CHARS = 50_000
MAX_CHUNKS = 200


@dataclass(frozen=True)
class Judged:
    """The span judged, what the validators see of it, and the context retrieved for it."""

    span: pb.Span
    subject: Subject
    context: list[str]


def choose_span(spans: Sequence[pb.Span], span_id: str, trace_id: str) -> pb.Span:
    """The span named; else the root, unless it recorded no output and an LLM span did (the
    last of those to start)."""
    if span_id:
        for span in spans:
            if span.span_id == span_id:
                return span
        raise not_found("span", f"{trace_id}/{span_id}")
    root = next((s for s in spans if not s.parent_span_id), spans[0])
    if root.HasField("output"):
        return root
    answered = [s for s in spans if s.kind == pb.SPAN_KIND_LLM and s.HasField("output")]
    if answered:
        return max(answered, key=lambda s: s.timing.start_time.ToNanoseconds())
    return root


def judged(spans: Sequence[pb.Span], span: pb.Span, reference: str | None) -> Judged:
    output = text_of(_value(span, "output"), "assistant")
    given = _value(span, "input")
    subject = Subject(
        output=output,
        input=text_of(given, "user"),
        reference=reference or None,
        latency_ms=_optional(span.timing, "duration_ms"),
        ttft_ms=_optional(span.timing, "time_to_first_token_ms"),
        cost_usd=_optional(span.cost, "total_usd"),
        input_tokens=_optional(span.usage, "input_tokens"),
        output_tokens=_optional(span.usage, "output_tokens"),
    )
    return Judged(span, subject, context_of(spans, given))


def context_of(spans: Sequence[pb.Span], given: Any) -> list[str]:
    chunks: list[str] = []
    if isinstance(given, dict):
        for key in _CONTEXT_KEYS:
            if key in given:
                chunks.extend(_documents(given[key]))
    for span in spans:
        if span.kind == pb.SPAN_KIND_RETRIEVAL and span.HasField("output"):
            chunks.extend(_documents(_value(span, "output")))
    return [chunk[:MAX_CHUNK_CHARS] for chunk in chunks if chunk.strip()][:MAX_CHUNKS]


def _value(span: pb.Span, field: Literal["input", "output"]) -> Any:
    if not span.HasField(field):
        return None
    return json_format.MessageToDict(getattr(span, field))


def _optional(message: Any, field: str) -> float | None:
    return float(getattr(message, field)) if message.HasField(field) else None


def _documents(value: Any) -> list[str]:
    """Each document's text: strings, or objects with a text field (nested under
    "document" as OpenInference records them)."""
    if value is None:
        return []
    if isinstance(value, dict):
        for key in ("documents", "contexts", "results"):
            if isinstance(value.get(key), list):
                return _documents(value[key])
        return [_text(value)]
    if isinstance(value, list):
        return [_text(item) for item in value]
    return [_text(value)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("document"), dict):
            return _text(value["document"])
        if isinstance(value.get("message"), dict):
            return _message_text(value["message"])
        for key in _TEXT_KEYS:
            if key in value:
                return _text(value[key])
        if "parts" in value:
            return _message_text(value)
    if isinstance(value, list) and all(isinstance(item, dict) and "type" in item for item in value):
        return _parts(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _parts(parts: list[Any]) -> str:
    """Content parts ({"type": "text", "text": ...} or GenAI's "content"), text ones only."""
    texts = []
    for part in parts:
        if isinstance(part, dict):
            piece = part.get("text", part.get("content"))
            if isinstance(piece, str):
                texts.append(piece)
        elif isinstance(part, str):
            texts.append(part)
    return "\n".join(texts)


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content", message.get("parts"))
    if isinstance(content, list):
        return _parts(content)
    return _text(content)


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and ("role" in item or isinstance(item.get("message"), dict))


def _role(item: dict[str, Any]) -> str:
    message = item.get("message", item)
    return str(message.get("role", "")) if isinstance(message, dict) else ""


def text_of(value: Any, role: str) -> str:
    """The text of an input (`role` "user") or an output ("assistant"): from a message list,
    the last message of that role (else the last message)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and all(_is_message(item) for item in value):
            chosen = next((m for m in reversed(value) if _role(m) == role), value[-1])
            return _message_text(chosen.get("message", chosen))
        return _text(value)
    if isinstance(value, dict):
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            first = choices[0]
            return _text(first.get("message", first.get("text", first)))
        if isinstance(value.get("messages"), list):
            return text_of(value["messages"], role)
        if role == "user":
            for key in _INPUT_KEYS:
                if isinstance(value.get(key), str):
                    return str(value[key])
        return _text(value)
    return _text(value)
