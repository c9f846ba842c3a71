"""The one-walk stored form of a span gives what the generic path gives (MessageToDict, then the
sanitizer over the whole result), on realistic spans and on spans with secrets everywhere."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format

from bench import spangen
from services.common import redact
from services.common.sanitize import (
    MASK,
    MAX_DEPTH,
    TRUNCATED,
    sanitize_headers,
    sanitize_text,
    sanitize_url,
    sanitize_value,
    sensitive_name,
)
from services.tracing import spans
from services.tracing.prices import PriceTable
from services.tracing.stored_json import NotFinite, parse_stored, stored_json
from tests.unit.test_sanitize import OPAQUE, PEM, SHAPED, _gone
from tunelab.tracing.v1 import spans_pb2 as pb

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def generic(span: pb.Span) -> dict[str, Any]:
    """The reference: the slow, obviously complete path the walk replaces."""
    data: dict[str, Any] = json_format.MessageToDict(span, preserving_proto_field_name=True)
    request = data.get("request", {})
    if "headers" in request:
        request["headers"] = sanitize_headers(request["headers"])
    for name in ("base_url", "api_endpoint"):
        if name in request:
            request[name] = sanitize_url(request[name])
    scores = data.get("evaluation", {}).pop("scores", None)
    result: dict[str, Any] = sanitize_value(data)
    if scores:
        kept = {k: v for k, v in scores.items() if not sensitive_name(k) and sanitize_text(k) == k}
        result.setdefault("evaluation", {})["scores"] = kept
    return result


def realistic() -> list[pb.Span]:
    prices = PriceTable.load(None)
    found = []
    for data in spangen.Traces(500, NOW, seed=5).producer():
        span = json_format.ParseDict(data, pb.Span())
        spans.complete(span, prices)
        found.append(span)
    return found


def test_realistic_spans_are_stored_as_the_generic_path_stores_them() -> None:
    for span in realistic():
        assert stored_json(span) == generic(span)


def hostile(rng: random.Random, secret: str) -> pb.Span:
    """A span with the secret in every text, key and header, and in the usual names."""

    def pick() -> str:
        return rng.choice(
            [secret, f"see {secret} here", f"api_key={secret}", f'{{"password": "{secret}"}}']
        )

    data: dict[str, Any] = {
        "trace_id": "t1",
        "span_id": "s1",
        "name": pick(),
        "kind": "SPAN_KIND_LLM",
        "status": "SPAN_STATUS_ERROR",
        "status_message": pick(),
        "model": "gpt-4o",
        "error_category": "auth",
        "timing": {"start_time": "2026-11-28T10:00:00.123Z", "end_time": "2026-11-28T10:00:01Z"},
        "usage": {"input_tokens": "12", "output_tokens": "3"},
        "request": {
            "api_endpoint": f"/v1/chat?key={secret}",
            "base_url": f"https://user:{secret}@api.example.com/",
            "provider_request_id": "req_1",
            "headers": {"Authorization": f"Bearer {secret}", "X-Note": pick(), secret: "v"},
            "http_status": 401,
        },
        "retries": {"count": 2, "reason": pick()},
        "flags": {"warnings": [pick(), "slow"], "fallback_reason": pick()},
        "session": {"session_id": "sess", "end_user_id": pick()},
        "evaluation": {"scores": {"helpful": 0.5, secret: 0.1, "api_key": 0.2}},
        "input": {
            "messages": [{"role": "user", "content": pick()}, {"role": "tool", "content": None}],
            "token": secret,
            secret: [1, 2.5, True, {"client_secret": {"nested": secret}}],
        },
        "output": pick(),
        "tags": [pick()[:128], "prod"],
        "metadata": {"headers": {"cookie": secret}, "note": pick(), "n": 3},
    }
    return json_format.ParseDict(data, pb.Span())


@pytest.mark.parametrize("secret", [*SHAPED, PEM, OPAQUE])
def test_spans_full_of_secrets_are_stored_as_the_generic_path_stores_them(secret: str) -> None:
    rng = random.Random(secret)
    for _ in range(5):
        span = hostile(rng, secret)
        stored = stored_json(span)
        assert stored == generic(span)
        if secret != OPAQUE:  # an opaque secret is masked by its name, not in free text
            _gone(secret, repr(stored))
        assert stored["input"]["token"] == MASK
        assert stored["request"]["headers"]["Authorization"] == MASK


def test_no_field_of_the_schema_is_masked_by_its_name() -> None:
    """The walk does not test field names: it relies on none of them looking like a secret."""

    def names(descriptor: Any, seen: set[str]) -> set[str]:
        if descriptor.full_name in seen:
            return set()
        seen.add(descriptor.full_name)
        found = {f.name for f in descriptor.fields}
        for f in descriptor.fields:
            kind = f.message_type
            ours = kind is not None and kind.full_name.startswith("tunelab.")
            # A map's keys are data, checked as such.
            if ours and not kind.GetOptions().map_entry:
                found |= names(kind, seen)
        return found

    for name in names(pb.Span.DESCRIPTOR, set()):
        assert not sensitive_name(name), name
        assert sanitize_text(name) == name


def test_free_form_values_nested_too_deep_are_truncated_as_before() -> None:
    # Built in memory: parsing stops far shallower (protobuf's own recursion limit).
    span = pb.Span(trace_id="t", span_id="s")
    value = span.input
    for level in range(MAX_DEPTH + 5):
        value = value.struct_value.fields["next"] if level % 2 else value.list_value.values.add()
    value.string_value = "leaf"
    stored = stored_json(span)
    assert stored == generic(span)
    assert TRUNCATED in repr(stored)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["input", "output", "metadata"])
def test_a_number_json_cannot_hold_is_refused_naming_its_field(number: float, where: str) -> None:
    span = pb.Span(trace_id="t", span_id="s")
    holder = getattr(span, where)
    if where == "metadata":
        holder["deep"] = {"list": [1, number]}
    else:
        holder.struct_value["x"] = number
    with pytest.raises(NotFinite) as caught:
        stored_json(span)
    assert caught.value.field == where
    with pytest.raises(spans.Invalid) as invalid:
        spans.stored_form(span)
    assert invalid.value.field == where


def test_an_unknown_enum_number_is_kept_as_a_number() -> None:
    span = pb.Span(trace_id="t", span_id="s", kind=99)  # type: ignore[arg-type]
    assert stored_json(span)["kind"] == 99 == generic(span)["kind"]


@pytest.mark.parametrize("nanos", [0, 5_000_000, 123_000, 7, 999_999_999])
@pytest.mark.parametrize("seconds", [0, 946_684_800, 1_795_867_200, 4_102_444_799, -86_400])
def test_times_are_written_as_protobuf_writes_them(seconds: int, nanos: int) -> None:
    span = pb.Span(trace_id="t", span_id="s")
    span.timing.start_time.seconds, span.timing.start_time.nanos = seconds, nanos
    expected = span.timing.start_time.ToJsonString()
    assert stored_json(span)["timing"]["start_time"] == expected


def stored_bodies() -> list[str]:
    bodies = [spans.stored_form(span).values[-1] for span in realistic()]
    rng = random.Random(9)
    for secret in [*SHAPED, PEM]:
        span = hostile(rng, secret)
        span.streaming.enabled = False
        span.session.message_position = 3
        span.evaluation.groundedness_score = 0.25
        span.rag.SetInParent()  # present, empty
        bodies.append(spans.stored_form(span).values[-1])
    odd = pb.Span(trace_id="t", span_id="s", kind=42)  # type: ignore[arg-type]
    odd.input.null_value = 0  # type: ignore[assignment]
    odd.output.list_value.values.add().struct_value["deep"] = 1.5
    odd.metadata["empty"] = {}
    odd.timing.start_time.FromJsonString("2026-11-28T10:00:00.123456789Z")
    bodies.append(spans.stored_form(odd).values[-1])
    return bodies


def test_stored_json_parses_back_as_protobuf_parses_it() -> None:
    for body in stored_bodies():
        assert parse_stored(body) == json_format.Parse(body, pb.Span()), body[:200]


@pytest.mark.parametrize(
    "body", ['{"no_such_field": 1}', '{"timing": {"start_time": "yesterday"}}', '{"tags": "x"}']
)
def test_what_is_not_the_services_json_is_refused(body: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_stored(body)


def test_an_id_spelling_one_of_the_services_own_secrets_is_refused() -> None:
    # Hex ids skip the shape tests; an operator's hex token must not pass as one.
    secret = "c0ffee" * 7
    redact.register(secret)
    span = pb.Span(trace_id=secret, span_id="0a1b-2c3d")
    span.timing.start_time.FromDatetime(NOW)
    with pytest.raises(spans.Invalid) as caught:
        spans.check_part(span, NOW)
    assert caught.value.field == "trace_id"
    spans.check_part(pb.Span(trace_id="c0ffee" * 3, span_id="0a1b-2c3d"), NOW)  # plain hex: fine
