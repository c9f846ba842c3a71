"""Masks credentials and personal data in the chat rows curated from traces.

A fine-tuning dataset is copied, shared and trained on, and a model can learn to repeat what it
was trained on; so the optional scrub pass of a curation masks every free text of a row before it
is written:

* credentials, by name and by shape, with `services.common.sanitize`. The tracing service did
  this when the spans were stored, but a dataset must hold none even if those rules change, so
  it is done again (on already-masked text it changes nothing);
* personal data, found by `services.eval.pii`: emails, phone numbers, Luhn-valid card numbers,
  IPv4/IPv6 addresses and US social security numbers become "[EMAIL]", "[PHONE]", "[CARD]",
  "[IP]", "[SSN]" (what each matches, and the look-alikes it keeps, is said there).

Free text is a message's `content` (a string, or the text and refusal parts of a list), its
`refusal`, and the arguments of its tool calls (and of the legacy `function_call`). Arguments
are JSON strings: parsed, so that a credential is masked by its key name whatever its type, then
dumped again (compact unless they were spaced); when nothing was masked the original string is
kept byte for byte, and arguments that are not JSON are scrubbed as text. Other content parts
(images, audio) are no prose and a mask would break them: they get credential masking only.
Roles, ids and names are kept as they are. The input is never modified.

Each call also counts what it masked, by kind ("credential", "email", "phone", "card", "ip",
"ssn"), for the curation to report. A credential is counted per mask `sanitize` added.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from services.common.sanitize import MASK, sanitize_text, sanitize_value
from services.eval import pii

MASKS: Mapping[str, str] = {
    "email": "[EMAIL]",
    "ssn": "[SSN]",
    "ip": "[IP]",
    "card": "[CARD]",
    "phone": "[PHONE]",
}
# Spans of two kinds can overlap: "123-45-6789 123-45-6789" also holds a Luhn-valid run of 13 to
# 19 digits, and a 12-digit dotted IP is shaped like a phone number. The span that starts first
# is masked; of two that start together, the kind listed first here (the narrower shape), then
# the longer span.
_FINDERS: tuple[tuple[str, Callable[[str], Iterator[pii.Span]]], ...] = (
    ("email", pii.emails),
    ("ssn", pii.ssns),
    ("ip", pii.ips),
    ("card", pii.cards),
    ("phone", pii.phones),
)
_TEXT_FIELDS = ("text", "refusal")  # of a content part


def scrub_text(text: str) -> tuple[str, Counter[str]]:
    """The text with credentials and personal data masked, and the count of masks by kind."""
    counts: Counter[str] = Counter()
    return _scrub_text(text, counts), counts


def scrub_messages(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """New OpenAI-style chat messages with every free text scrubbed, and the count of masks by
    kind over all of them."""
    counts: Counter[str] = Counter()
    return [_scrub_message(message, counts) for message in messages], counts


def _scrub_text(text: str, counts: Counter[str]) -> str:
    clean = sanitize_text(text)
    _count_credentials(text, clean, counts)
    return _mask_pii(clean, counts)


def _count_credentials(before: str, after: str, counts: Counter[str]) -> None:
    added = after.count(MASK) - before.count(MASK)
    if added > 0:
        counts["credential"] += added


def _mask_pii(text: str, counts: Counter[str]) -> str:
    found = [
        (start, rank, -end, kind)
        for rank, (kind, finder) in enumerate(_FINDERS)
        for start, end in finder(text)
    ]
    if not found:
        return text
    found.sort()
    pieces: list[str] = []
    cursor = 0
    for start, _rank, negative_end, kind in found:
        if start < cursor:
            continue  # overlaps a span already masked
        pieces += (text[cursor:start], MASKS[kind])
        cursor = -negative_end
        counts[kind] += 1
    pieces.append(text[cursor:])
    return "".join(pieces)


def _scrub_message(message: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key == "content":
            out[key] = _scrub_content(value, counts)
        elif key == "refusal" and isinstance(value, str):
            out[key] = _scrub_text(value, counts)
        elif key == "tool_calls" and isinstance(value, list):
            out[key] = [_scrub_call(call, counts) for call in value]
        elif key == "function_call":
            out[key] = _scrub_function(value, counts)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _scrub_content(content: Any, counts: Counter[str]) -> Any:
    if isinstance(content, str):
        return _scrub_text(content, counts)
    if not isinstance(content, list):
        return copy.deepcopy(content)
    parts: list[Any] = []
    for part in content:
        if isinstance(part, str):
            parts.append(_scrub_text(part, counts))
        elif isinstance(part, Mapping) and any(isinstance(part.get(f), str) for f in _TEXT_FIELDS):
            parts.append(
                {
                    key: _scrub_text(value, counts)
                    if key in _TEXT_FIELDS and isinstance(value, str)
                    else copy.deepcopy(value)
                    for key, value in part.items()
                }
            )
        else:
            parts.append(_sanitized(part, counts))
    return parts


def _sanitized(value: Any, counts: Counter[str]) -> Any:
    """Credentials masked, nothing else (for what is not prose)."""
    clean = sanitize_value(value)
    _count_credentials(_dumped(value), _dumped(clean), counts)
    return clean


def _scrub_call(call: Any, counts: Counter[str]) -> Any:
    if not isinstance(call, Mapping):
        return _sanitized(call, counts)
    return {
        key: _scrub_function(value, counts) if key == "function" else copy.deepcopy(value)
        for key, value in call.items()
    }


def _scrub_function(function: Any, counts: Counter[str]) -> Any:
    if not isinstance(function, Mapping):
        return _sanitized(function, counts)
    out: dict[str, Any] = {}
    for key, value in function.items():
        if key != "arguments":
            out[key] = copy.deepcopy(value)  # the name
        elif isinstance(value, str):
            out[key] = _scrub_arguments(value, counts)
        else:
            out[key] = _sanitized(value, counts)
    return out


def _scrub_arguments(raw: str, counts: Counter[str]) -> str:
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
        return _scrub_text(raw, counts)
    clean = sanitize_value(parsed)  # also cuts nesting to sanitize.MAX_DEPTH
    _count_credentials(_dumped(parsed), _dumped(clean), counts)
    clean = _mask_pii_in(clean, counts)
    if clean == parsed:
        return raw
    spaced = '": ' in raw or '", ' in raw
    return json.dumps(clean, ensure_ascii=False, separators=None if spaced else (",", ":"))


def _mask_pii_in(value: Any, counts: Counter[str]) -> Any:
    """Personal data masked in every string (keys too) of a JSON value `sanitize_value` built."""
    if isinstance(value, str):
        return _mask_pii(value, counts)
    if isinstance(value, dict):
        return {
            _mask_pii(key, counts) if isinstance(key, str) else key: _mask_pii_in(item, counts)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask_pii_in(item, counts) for item in value]
    if type(value) is int and abs(value) >= 10**12:
        # A card number written as a JSON number becomes the string "[CARD]".
        digits = str(value)
        masked = _mask_pii(digits, counts)
        return value if masked == digits else masked
    return value


def _dumped(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
