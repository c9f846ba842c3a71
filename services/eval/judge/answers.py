"""Strict reading of the judge's answer: exactly the JSON object asked for, or a failure.

The same rules hold whether the endpoint enforced a JSON schema or not: one JSON object (or
one inside a ```json fence that is the whole message), exactly the expected keys, each of the
expected type, no key twice, and a finite score inside the scale. Anything else fails with a
reason; nothing is guessed from prose and nothing defaults to a score (the judges whose parse
failures silently count as passes are what Langfuse and promptfoo users complain about).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from services.eval.groundedness import Claim

QUOTE_CHARS = 120

_FENCE = re.compile(r"```(?:json)?[ \t]*\r?\n(.*)\r?\n[ \t]*```", re.DOTALL | re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class AnswerError(Exception):
    """The answer is not what was asked for; `detail` says how, safe to show once masked."""

    def __init__(self, kind: Literal["unparseable", "out_of_scale"], detail: str) -> None:
        super().__init__(detail)
        self.kind: Literal["unparseable", "out_of_scale"] = kind
        self.detail = detail


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A short, one-line excerpt of text from elsewhere, for an error message."""
    flat = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")


def parse_grade(text: str, scale: tuple[float, float]) -> tuple[float, str]:
    """The score (as given) and the reasoning of a {"reasoning", "score"} answer."""
    value = _object(text, {"reasoning", "score"})
    score, reasoning = value["score"], value["reasoning"]
    if not isinstance(reasoning, str):
        raise AnswerError("unparseable", "the judge's reasoning is not a string")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise AnswerError("unparseable", f"the judge's score is not a number: {quote(repr(score))}")
    low, high = scale
    try:
        number = float(score)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise AnswerError(
            "out_of_scale",
            f"the judge's score {_number(score)} is outside the scale {low:g} to {high:g}",
        )
    return number, reasoning


def parse_claims(text: str, chunks: int) -> list[Claim]:
    """The claims of a {"claims": [...]} answer, as groundedness Claims; `chunks` is how many
    context chunks the prompt numbered (from 1)."""
    items = _object(text, {"claims"})["claims"]
    if not isinstance(items, list):
        raise AnswerError("unparseable", "the judge's claims are not a list")
    return [_claim(item, index, chunks) for index, item in enumerate(items)]


def _claim(item: Any, index: int, chunks: int) -> Claim:
    where = f"claim {index + 1}"
    if not isinstance(item, dict):
        raise AnswerError("unparseable", f"{where} is not an object")
    _exact_keys(item, {"claim", "supported", "chunk", "reason"}, where)
    text, supported, chunk, reason = (
        item["claim"],
        item["supported"],
        item["chunk"],
        item["reason"],
    )
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("unparseable", f"{where}'s text is not a non-empty string")
    if not isinstance(supported, bool):
        raise AnswerError("unparseable", f"{where}'s supported is not true or false")
    if not isinstance(reason, str):
        raise AnswerError("unparseable", f"{where}'s reason is not a string")
    if chunk is not None and (
        isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= chunks
    ):
        raise AnswerError(
            "unparseable",
            f"{where} names context chunk {quote(repr(chunk), 40)}, "
            f"not one of 1 to {chunks} or null",
        )
    return Claim(
        text=text.strip(),
        supported=supported,
        chunk_index=None if chunk is None else chunk - 1,
        strength=1.0 if supported else 0.0,
        reason=reason,
    )


def _number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _object(text: str, keys: set[str]) -> dict[str, Any]:
    body = text.strip()
    if fence := _FENCE.fullmatch(body):
        body = fence.group(1)
    try:
        value = json.loads(body, object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError):
        raise AnswerError("unparseable", f"the judge's answer is not JSON: {quote(text)}") from None
    if not isinstance(value, dict):
        raise AnswerError("unparseable", f"the judge's answer is not a JSON object: {quote(text)}")
    _exact_keys(value, keys, "the judge's answer")
    return value


def _exact_keys(value: dict[str, Any], keys: set[str], where: str) -> None:
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unexpected {', '.join(quote(k, 30) for k in extra[:5])}"] if extra else []
        )
        raise AnswerError("unparseable", f"{where} {' and '.join(problems)}")


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise AnswerError("unparseable", "the judge's answer gives a key twice")
    return value
