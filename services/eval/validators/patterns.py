"""The regex validator, on the `regex` package so that a match has a timeout.

Python's `re` cannot be interrupted: `(a+)+$` against 50,000 "a"s and a "!" backtracks for
longer than the universe. `regex` checks a deadline while it matches, so a catastrophic
pattern costs at most `timeout_ms` and becomes a failed outcome, not a hung worker.
"""

from __future__ import annotations

import regex

from services.eval.validators.params import Params
from services.eval.validators.subject import Finding, Subject, binary, hard_fail
from services.eval.validators.text import Check, shown

MAX_PATTERN_CHARS = 2_000
DEFAULT_TIMEOUT_MS = 100.0
MAX_TIMEOUT_MS = 1_000.0


def build_regex(params: Params) -> Check:
    """Passes when the pattern is found anywhere in the output (`search`), or, with
    `full_match`, when it matches the whole output."""
    source = params.text("pattern")
    if len(source) > MAX_PATTERN_CHARS:
        raise params.error("pattern", f"is longer than {MAX_PATTERN_CHARS} characters")
    flags = regex.IGNORECASE | regex.FULLCASE if not params.flag("case_sensitive", True) else 0
    if params.flag("multiline", False):
        flags |= regex.MULTILINE
    full = params.flag("full_match", False)
    timeout_ms = params.number("timeout_ms", minimum=1.0) or DEFAULT_TIMEOUT_MS
    if timeout_ms > MAX_TIMEOUT_MS:
        raise params.error("timeout_ms", f"must be at most {MAX_TIMEOUT_MS:g}")
    try:
        # V0 is `re`'s syntax, so patterns written for Python or PCRE mean what they say.
        pattern = regex.compile(source, flags | regex.V0)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise params.error("pattern", f"is not a valid regular expression: {exc}") from None
    timeout = timeout_ms / 1000

    def check(subject: Subject) -> Finding:
        try:
            if full:
                match = pattern.fullmatch(subject.output, timeout=timeout)
            else:
                match = pattern.search(subject.output, timeout=timeout)
        except TimeoutError:
            return hard_fail(
                f"the pattern did not finish within {timeout_ms:g} ms on "
                f"{len(subject.output)} characters (catastrophic backtracking?)"
            )
        verb = "matches" if full else "found"
        if match is None:
            return binary(False, f"pattern {shown(source)} not {verb}")
        return binary(True, f"pattern {shown(source)} {verb}")

    return check
