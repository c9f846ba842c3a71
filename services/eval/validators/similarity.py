"""Similarity to a reference text: Levenshtein ratio and ROUGE-L F1.

Both use bit-parallel algorithms on Python integers (Myers/Hyyrö for edit distance,
Allison-Dix/Hyyrö for the longest common subsequence): memory is linear in the reference and
time is len(output) big-integer operations, each over len(reference) bits. The work is bounded
by comparing at most MAX_SIMILARITY_CHARS characters (Levenshtein) or MAX_SIMILARITY_TOKENS
tokens (ROUGE-L) from the start of each text; the reason says when that cut applied.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Hashable, Sequence

from services.eval.validators.params import Params
from services.eval.validators.subject import Finding, Subject, hard_fail
from services.eval.validators.text import TOKEN, Check

MAX_SIMILARITY_CHARS = 10_000  # ~40 ms worst case
MAX_SIMILARITY_TOKENS = 20_000


def _masks(pattern: Sequence[Hashable]) -> dict[Hashable, int]:
    """For each symbol, the bit set of the positions where it occurs in `pattern`."""
    masks: dict[Hashable, int] = {}
    for position, symbol in enumerate(pattern):
        masks[symbol] = masks.get(symbol, 0) | (1 << position)
    return masks


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1)."""
    if not a or not b:
        return len(a) + len(b)
    masks = _masks(a)
    full = (1 << len(a)) - 1
    last = 1 << (len(a) - 1)
    plus, minus, distance = full, 0, len(a)
    for symbol in b:
        equal = masks.get(symbol, 0)
        vertical = equal | minus
        horizontal = (((equal & plus) + plus) ^ plus) | equal
        h_plus = minus | (~(horizontal | plus) & full)
        h_minus = plus & horizontal
        if h_plus & last:
            distance += 1
        elif h_minus & last:
            distance -= 1
        h_plus = ((h_plus << 1) | 1) & full
        h_minus = (h_minus << 1) & full
        plus = h_minus | (~(vertical | h_plus) & full)
        minus = h_plus & vertical
    return distance


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence."""
    if not a or not b:
        return 0
    masks = _masks(a)
    full = (1 << len(a)) - 1
    row = full
    for symbol in b:
        matched = row & masks.get(symbol, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


def levenshtein_ratio(a: str, b: str) -> float:
    """1 - distance / the longer length; 1.0 for two empty texts."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def words(text: str) -> list[str]:
    return [token.casefold() for token in TOKEN.findall(text) if token[0].isalnum()]


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 over word tokens; 1.0 when both are empty, 0.0 when only one is."""
    if not candidate and not reference:
        return 1.0
    common = lcs_length(reference, candidate)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def _reference(params: Params) -> Callable[[Subject], str | None]:
    fixed = params.optional_text("reference")
    return lambda subject: fixed if fixed is not None else subject.reference


def _cut_note(cut: bool, limit: int, unit: str) -> str:
    return f" (first {limit} {unit} of each compared)" if cut else ""


NO_REFERENCE = "no reference text: give params.reference or record one on the span"


def build_levenshtein(params: Params) -> Check:
    reference_of = _reference(params)

    def check(subject: Subject) -> Finding:
        reference = reference_of(subject)
        if reference is None:
            return hard_fail(NO_REFERENCE)
        cut = max(len(subject.output), len(reference)) > MAX_SIMILARITY_CHARS
        a = unicodedata.normalize("NFC", subject.output[:MAX_SIMILARITY_CHARS])
        b = unicodedata.normalize("NFC", reference[:MAX_SIMILARITY_CHARS])
        ratio = levenshtein_ratio(a, b)
        note = _cut_note(cut, MAX_SIMILARITY_CHARS, "characters")
        return Finding(ratio, f"Levenshtein ratio {ratio:.3f}{note}")

    return check


def build_rouge_l(params: Params) -> Check:
    reference_of = _reference(params)

    def check(subject: Subject) -> Finding:
        reference = reference_of(subject)
        if reference is None:
            return hard_fail(NO_REFERENCE)
        # Tokenising is linear, but a 5 MB output need not be split whole: enough characters
        # for MAX_SIMILARITY_TOKENS tokens (a token is at least one character).
        window = MAX_SIMILARITY_TOKENS * 64
        candidate = words(subject.output[:window])
        expected = words(reference[:window])
        cut = max(len(candidate), len(expected)) > MAX_SIMILARITY_TOKENS or (
            max(len(subject.output), len(reference)) > window
        )
        score = rouge_l(candidate[:MAX_SIMILARITY_TOKENS], expected[:MAX_SIMILARITY_TOKENS])
        note = _cut_note(cut, MAX_SIMILARITY_TOKENS, "words")
        return Finding(score, f"ROUGE-L F1 {score:.3f}{note}")

    return check
