"""What a validator sees (`Subject`) and what it says (`Outcome`)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subject:
    """One span as the validators see it: its texts and the numeric fields they may bound.

    A numeric field is None when the span did not record it; validators that need it fail
    with a reason instead of guessing.
    """

    output: str
    input: str = ""
    reference: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    cost_usd: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None


def clamp_score(score: float) -> float:
    """A score in [0, 1]; NaN (which compares false with everything) becomes 0."""
    if math.isnan(score):
        return 0.0
    return min(1.0, max(0.0, score))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One validator's result. The score is clamped on construction, so it is never NaN."""

    passed: bool
    score: float
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", clamp_score(float(self.score)))


@dataclass(frozen=True, slots=True)
class Finding:
    """What a check measured, before the threshold is applied.

    `failed` marks a result no threshold can turn into a pass (a missing field, a regex that
    timed out, output that is not JSON).
    """

    score: float
    reason: str
    failed: bool = False


def hard_fail(reason: str) -> Finding:
    return Finding(0.0, reason, failed=True)


def binary(ok: bool, reason: str) -> Finding:
    """A yes/no check: score 1 when it holds, 0 otherwise."""
    return Finding(1.0 if ok else 0.0, reason)
