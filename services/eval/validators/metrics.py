"""Bounds on the span's numeric fields: latency, time to first token, cost, token counts."""

from __future__ import annotations

import math
from collections.abc import Callable

from services.eval.validators.params import Params
from services.eval.validators.subject import Finding, Subject, binary, hard_fail
from services.eval.validators.text import Check

# Each kind is named for the Subject field it bounds.
FIELDS: dict[str, Callable[[Subject], float | None]] = {
    "latency_ms": lambda subject: subject.latency_ms,
    "ttft_ms": lambda subject: subject.ttft_ms,
    "cost_usd": lambda subject: subject.cost_usd,
    "input_tokens": lambda subject: subject.input_tokens,
    "output_tokens": lambda subject: subject.output_tokens,
}


def bound_builder(name: str) -> Callable[[Params], Check]:
    read = FIELDS[name]

    def build(params: Params) -> Check:
        low, high = params.bounds("min", "max")

        def check(subject: Subject) -> Finding:
            value = read(subject)
            if value is None:
                return hard_fail(f"the span has no {name}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                return hard_fail(f"the span's {name} is not a number")
            if not math.isfinite(value):
                return hard_fail(f"the span's {name} is {value}, not a finite number")
            if low is not None and value < low:
                return binary(False, f"{name} {value:g} is below {low:g}")
            if high is not None and value > high:
                return binary(False, f"{name} {value:g} is above {high:g}")
            return binary(True, f"{name} {value:g} is within bounds")

        return check

    return build
