"""Offline groundedness: is each sentence of a RAG answer backed by the retrieved context?

No model and no I/O, so the embedded default works with no API at all. The method:

1. The answer is split into sentence-level claims (`services.eval.text.answer_claims`: code
   blocks, headings, questions and fragments of fewer than two content words are not claims).
2. The context chunks are split into sentences; the units compared are single sentences and
   windows of `WINDOW` (2) consecutive sentences, across chunk boundaries too (an answer's
   sentence often joins two: "It added ..." after "Python 3.11 was released ..."). Chunks are
   cut at `MAX_CHUNK_CHARS`, the answer at `MAX_ANSWER_CHARS`, at most `MAX_CLAIMS` claims are
   checked and at most `MAX_UNITS` units compared, so the work is bounded (claims x units)
   whatever the input (the worst case, 64 claims each matching all 2,000 units, takes under two
   seconds on one core); `truncated` says when a limit was hit.
3. Terms are NFKC-normalised, lower-cased, stopword-filtered, suffix-stemmed words plus
   canonical numbers ("1,000" = "1000", "3.50" = "3.5").
4. For each claim and unit: *recall* = fraction of the claim's distinct terms found in the unit,
   and Okapi BM25 (k1 = `BM25_K1` = 1.2, b = `BM25_B` = 0.75, the usual defaults; IDF over the
   units, with the +1 inside the log so it is never negative). BM25 only ranks: among units that
   pass, or failing that among all, the best is the one with the highest
   recall + `BM25_WEIGHT` * BM25 / max BM25.
5. A claim is *supported* by a unit when recall ≥ `SUPPORT_THRESHOLD`, every number and every
   name (a capitalised word not first in the sentence) of the claim appears in the unit, and the
   claim and the unit's sentences that share its terms agree on negation (both or neither carry
   "not", "never", "no", "n't" ...).

Score = supported claims / checked claims. An answer with no checkable claims ("I don't know.",
only code) gets `score = None` with a reason, never NaN and never a free 1.0: nothing was
checked, so a `min_groundedness` filter or a mean should not count it as grounded (Ragas returns
NaN here, which its users report as breaking their averages). Claims with no context at all are
unsupported (score 0.0).

Threshold and measured quality, on tests/fixtures/eval/groundedness_labelled.jsonl (56 claim /
context pairs, 25 supported: verbatim and paraphrased support, changed numbers, negations,
unsupported additions, entity swaps, and a few hard cases lexical overlap is known to miss),
checked by tests/unit/test_eval_groundedness.py. Recall thresholds 0.50 / 0.55 / 0.60 / 0.65 /
0.70 / 0.75 give accuracy 0.88 / 0.91 / 0.91 / 0.93 / 0.91 / 0.89; at the chosen
SUPPORT_THRESHOLD = 0.65: accuracy 0.93, precision 0.92, recall 0.92 (supported = positive;
23 TP, 2 FP, 29 TN, 2 FN). The threshold was chosen on this same small set, so expect less on
other text; the errors left are the limits below.

Limits, honestly: this is lexical. A paraphrase with different words ("twice as much text" for
"context length doubled", "the end of the 1880s" for "1889") reads as unsupported; a swapped
name in first place ("Google acquired GitHub"), a swapped common noun that keeps most words, or
a reordered relation ("GitHub acquired Microsoft") reads as supported; negation is a parity
check on a word list, so "failed" for "did not succeed" or a double negation is missed; numbers
written as words are not numbers. Use the judge-based method where those matter.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.eval import text

SUPPORT_THRESHOLD = 0.65
BM25_K1 = 1.2
BM25_B = 0.75
BM25_WEIGHT = 0.25
WINDOW = 2
MAX_CLAIMS = 64
MAX_CHUNK_CHARS = 8_000
MAX_UNITS = 2_000
MAX_ANSWER_CHARS = 50_000


@dataclass(frozen=True)
class Claim:
    """One sentence of the answer and the context that best backs it."""

    text: str
    supported: bool
    chunk_index: int | None
    """Index into the given context of the best-matching chunk; None when there is no context."""
    strength: float
    """The claim's term recall in the best unit, in [0, 1]."""
    reason: str
    """Why it is or is not supported, for a person reading the judgment."""


@dataclass(frozen=True)
class Groundedness:
    """The answer's groundedness: its score, each claim's verdict and the unsupported ones."""

    score: float | None
    """Supported / checked claims in [0, 1]; None when the answer has no checkable claim."""
    claims: list[Claim]
    reason: str
    truncated: bool = False
    """A bound was hit (answer, claims, chunk length or units): only part of the input was used."""
    unsupported: list[str] = field(init=False)
    """The unsupported claims' texts, as Ragas-faithfulness users read them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "unsupported", [c.text for c in self.claims if not c.supported])


@dataclass(frozen=True)
class _Sentence:
    chunk_index: int
    terms: frozenset[str]
    negated: bool
    counts: Counter[str]


@dataclass(frozen=True)
class _Unit:
    """A sentence or a window of consecutive sentences: what one claim is compared with."""

    sentences: tuple[_Sentence, ...]
    terms: Counter[str]


def _context_sentences(context: Sequence[str]) -> tuple[list[_Sentence], bool]:
    sentences: list[_Sentence] = []
    truncated = False
    for index, chunk in enumerate(context):
        if len(chunk) > MAX_CHUNK_CHARS:
            chunk, truncated = chunk[:MAX_CHUNK_CHARS], True
        for paragraph in chunk.split("\n\n"):
            for sentence in text.split_sentences(paragraph.strip()):
                counts = Counter(text.content_terms(sentence))
                negated = text.is_negated(sentence)
                sentences.append(_Sentence(index, frozenset(counts), negated, counts))
                if len(sentences) >= MAX_UNITS // WINDOW:
                    return sentences, True
    return sentences, truncated


def _units(context: Sequence[str]) -> tuple[list[_Unit], bool]:
    """Single sentences and windows of consecutive sentences, across chunk boundaries too.

    Retrieved chunks are often consecutive passages and an answer's sentence often joins two
    ("It added ..." after "Python 3.11 was released ..."), so a window may span two chunks.
    """
    sentences, truncated = _context_sentences(context)
    units: list[_Unit] = []
    for start in range(len(sentences)):
        for width in range(1, min(WINDOW, len(sentences) - start) + 1):
            window = tuple(sentences[start : start + width])
            units.append(_Unit(window, sum((s.counts for s in window), Counter())))
    return units, truncated


class _BM25:
    """Okapi BM25 over the context units, each unit a document."""

    def __init__(self, units: Sequence[_Unit]) -> None:
        self._units = units
        lengths = [sum(u.terms.values()) for u in units]
        self._average = (sum(lengths) / len(lengths)) if lengths and sum(lengths) else 1.0
        frequency: Counter[str] = Counter()
        for unit in units:
            frequency.update(unit.terms.keys())
        n = len(units)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def score(self, query: set[str], unit: _Unit) -> float:
        length = sum(unit.terms.values())
        norm = BM25_K1 * (1 - BM25_B + BM25_B * length / self._average)
        total = 0.0
        for term in query:
            tf = unit.terms.get(term, 0)
            if tf:
                total += self._idf[term] * tf * (BM25_K1 + 1) / (tf + norm)
        return total


def _negation_mismatch(claim: str, claim_terms: set[str], unit: _Unit) -> bool:
    """Negation parity between the claim and the unit's sentences that share its terms."""
    relevant = [s for s in unit.sentences if claim_terms & s.terms]
    return text.is_negated(claim) != any(s.negated for s in relevant)


def _best_chunk(terms: set[str], unit: _Unit) -> int:
    """The chunk of the unit's sentence that holds most of the claim's terms."""
    return max(unit.sentences, key=lambda s: len(terms & s.terms)).chunk_index


def _judge(claim: str, units: Sequence[_Unit], bm25: _BM25) -> Claim:
    terms = set(text.content_terms(claim))
    exact = text.numbers(claim) | text.entities(claim)
    if not units:
        return Claim(claim, False, None, 0.0, "no context to check against")
    scores = [bm25.score(terms, u) for u in units]
    top = max(scores) or 1.0
    best: tuple[bool, float, float, int, str] | None = None
    for position, unit in enumerate(units):
        recall = sum(1 for t in terms if t in unit.terms) / len(terms)
        missing = sorted(n for n in exact if n not in unit.terms)
        if recall < SUPPORT_THRESHOLD:
            reason = f"only {recall:.0%} of the claim's words are in the context"
        elif missing:
            reason = f"{', '.join(missing)} is not in the matching context"
        elif _negation_mismatch(claim, terms, unit):
            reason = "the matching context says the opposite (negation differs)"
        else:
            reason = ""
        candidate = (not reason, recall + BM25_WEIGHT * scores[position] / top, recall, position)
        if best is None or candidate[:2] > best[:2]:
            best = (*candidate, reason)
    assert best is not None
    passed, _, recall, position, reason = best
    return Claim(
        text=claim,
        supported=passed,
        chunk_index=_best_chunk(terms, units[position]),
        strength=round(recall, 4),
        reason=reason or "supported by the context",
    )


def offline_groundedness(answer: str, context: Sequence[str]) -> Groundedness:
    """Check each sentence of `answer` against `context` chunks, lexically (see module doc)."""
    truncated = len(answer) > MAX_ANSWER_CHARS
    claims = text.answer_claims(answer[:MAX_ANSWER_CHARS])
    if len(claims) > MAX_CLAIMS:
        claims, truncated = claims[:MAX_CLAIMS], True
    if not claims:
        return Groundedness(None, [], "the answer has no checkable claims", truncated)
    units, cut = _units(context)
    bm25 = _BM25(units)
    judged = [_judge(c, units, bm25) for c in claims]
    supported = sum(1 for c in judged if c.supported)
    return Groundedness(
        score=supported / len(judged),
        claims=judged,
        reason=f"{supported} of {len(judged)} claims supported by the context",
        truncated=truncated or cut,
    )
