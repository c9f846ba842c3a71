"""String checks on the output: equals, contains, starts/ends with, length in characters and
tokens.

Texts are compared in Unicode NFC, so "é" written as one code point or as "e" + a combining
accent is the same text; case-insensitive checks also case-fold ("Straße" contains "STRASSE").
Every check here is a linear scan in C (str.find, startswith), so a 5 MB output costs
milliseconds; token counting stops as soon as the bound is decided.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable

from services.eval.validators.params import Params
from services.eval.validators.subject import Finding, Subject, binary

Check = Callable[[Subject], Finding]

# The tokenizer: runs of word characters, and each other non-space character on its own.
# Not a model's tokenizer (none is available offline); it counts words and punctuation, which
# is about 0.75 of a BPE tokenizer's count on English prose.
TOKEN = re.compile(r"\w+|[^\w\s]")

_SHOWN = 40


def shown(value: str) -> str:
    """A value as quoted in a reason, shortened."""
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")


def normalize(text: str, case_sensitive: bool) -> str:
    text = unicodedata.normalize("NFC", text)
    return text if case_sensitive else text.casefold()


def _case(params: Params) -> bool:
    return params.flag("case_sensitive", True)


def build_equals(params: Params) -> Check:
    sensitive = _case(params)
    want = normalize(params.text("value", non_empty=False), sensitive)

    def check(subject: Subject) -> Finding:
        same = normalize(subject.output, sensitive) == want
        return binary(same, "output equals the value" if same else "output differs from the value")

    return check


def build_contains(params: Params) -> Check:
    sensitive = _case(params)
    raw = params.text("value")
    want = normalize(raw, sensitive)

    def check(subject: Subject) -> Finding:
        found = want in normalize(subject.output, sensitive)
        return binary(found, f"output {'contains' if found else 'does not contain'} {shown(raw)}")

    return check


def build_not_contains(params: Params) -> Check:
    contains = build_contains(params)

    def check(subject: Subject) -> Finding:
        found = contains(subject)
        return binary(found.score == 0.0, found.reason)

    return check


def _found(params: Params) -> Callable[[Subject], tuple[list[str], list[str]]]:
    sensitive = _case(params)
    values = params.texts("values")
    wanted = [(value, normalize(value, sensitive)) for value in values]

    def split(subject: Subject) -> tuple[list[str], list[str]]:
        output = normalize(subject.output, sensitive)
        found = [raw for raw, want in wanted if want in output]
        missing = [raw for raw, want in wanted if want not in output]
        return found, missing

    return split


def build_contains_all(params: Params) -> Check:
    """Score: the share of the values found, so a threshold below 1 accepts most of them."""
    split = _found(params)

    def check(subject: Subject) -> Finding:
        found, missing = split(subject)
        if not missing:
            return binary(True, f"output contains all {len(found)} values")
        listed = ", ".join(shown(value) for value in missing)
        return Finding(len(found) / (len(found) + len(missing)), f"output lacks {listed}")

    return check


def build_contains_any(params: Params) -> Check:
    split = _found(params)

    def check(subject: Subject) -> Finding:
        found, _ = split(subject)
        if found:
            return binary(True, f"output contains {shown(found[0])}")
        return binary(False, "output contains none of the values")

    return check


def _affix(params: Params, at_start: bool) -> Check:
    sensitive = _case(params)
    raw = params.text("value")
    want = normalize(raw, sensitive)
    verb = "starts" if at_start else "ends"

    def check(subject: Subject) -> Finding:
        # Only the end that matters is normalised: a bounded slice, whatever the output's size.
        span = len(raw) * 4 + 16
        output = subject.output
        part = output[:span] if at_start else output[-span:]
        part = normalize(part, sensitive)
        ok = part.startswith(want) if at_start else part.endswith(want)
        return binary(ok, f"output {verb if ok else 'does not ' + verb[:-1]} with {shown(raw)}")

    return check


def build_starts_with(params: Params) -> Check:
    return _affix(params, at_start=True)


def build_ends_with(params: Params) -> Check:
    return _affix(params, at_start=False)


def _within(count: int, low: float | None, high: float | None, unit: str) -> Finding:
    if low is not None and count < low:
        return binary(False, f"output has {count} {unit}, fewer than {low:g}")
    if high is not None and count > high:
        return binary(False, f"output has more than {high:g} {unit}")
    return binary(True, f"output has {count} {unit}")


def build_char_length(params: Params) -> Check:
    """Characters are code points after NFC."""
    low, high = params.bounds("min", "max")

    def check(subject: Subject) -> Finding:
        count = len(unicodedata.normalize("NFC", subject.output))
        if high is not None and count > high:
            return binary(False, f"output has {count} characters, more than {high:g}")
        return _within(count, low, high, "characters")

    return check


def count_tokens(text: str, limit: int | None = None) -> int:
    """Tokens of `text` (see TOKEN), counting no further than `limit` when given."""
    return sum(1 for _ in itertools.islice(TOKEN.finditer(text), limit))


def build_token_length(params: Params) -> Check:
    low, high = params.bounds("min", "max")
    # Counting past max + 1 (or past min when there is no max) cannot change the answer.
    limit = int(high) + 1 if high is not None else int(low or 0) + 1

    def check(subject: Subject) -> Finding:
        count = count_tokens(subject.output, limit)
        if high is None and count == limit:
            return binary(True, f"output has at least {count} tokens")
        return _within(count, low, high, "tokens")

    return check
