"""Masks credentials in text before it reaches a log line or an error message."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

# Our own bearer tokens carry a prefix so that they are recognisable here and by secret scanners.
DOWNLOAD_TOKEN_PREFIX = "tldl_"  # noqa: S105 (a prefix, not a secret)


def _mask(match: re.Match[str]) -> str:
    value = match.group(0)
    lead = value.split()[0] + " " if " " in value else value[:5]
    return f"{lead}[REDACTED]"


def _mask_jwt(match: re.Match[str]) -> str:
    return _mask(match) if match.group("tail") else match.group(0)


class _Shape(NamedTuple):
    """A credential's shape, and the literals every match of it holds: the pattern runs only on
    text that holds one of them (a substring test, at C speed), which most text does not."""

    pattern: re.Pattern[str]
    needles: tuple[str, ...]
    folded: bool = False  # the needles are looked for in `fold(text)`
    mask: Callable[[re.Match[str]], str] = _mask


# Each pattern also starts with a literal, so that when it does run the regex engine scans for
# that instead of trying the pattern at every position; the word boundary a leading `\b` would
# check is a lookbehind right after it (`sk-(?<!\wsk-)` is `\bsk-`). Every pattern must stay
# linear: callers pass text that others control.
_SHAPES = [
    # JSON Web Tokens (masked only with both tails: see `_mask_jwt`). The tails are optional so
    # that a failed attempt still consumes the whole run: with them required, a long run of
    # "eyJ-eyJ-..." took quadratic time (each "eyJ" rescanned the rest).
    _Shape(
        re.compile(
            r"eyJ(?<!\weyJ)[A-Za-z0-9_-]{5,}+(?P<tail>\.[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+)?"
        ),
        ("eyJ",),
        mask=_mask_jwt,
    ),
    # tunelab tokens: tldl_ (dataset downloads) and any later tl??_ kind.
    _Shape(re.compile(r"tl(?<!\wtl)[a-z]{2}_[A-Za-z0-9_-]{20,}"), ("tl",)),
    # Authorization header values.
    _Shape(
        re.compile(r"[Bb](?<!\w[Bb])(?i:(?:earer|asic)\s+[A-Za-z0-9._~+/=-]{8,})"),
        ("bearer", "basic"),
        folded=True,
    ),
    # Provider API keys in their published shapes (sk-ant- is an sk- key).
    _Shape(
        re.compile(
            r"(?:sk-(?<!\wsk-)|hf_(?<!\whf_)|rpa_(?<!\wrpa_)|ghp_(?<!\wghp_)|xox[abp]-(?<!\wxox.-))"
            r"[A-Za-z0-9_-]{16,}"
        ),
        ("sk-", "hf_", "rpa_", "ghp_", "xox"),
    ),
    # More published shapes: AWS access key ids, Google API keys, Stripe secret/restricted keys
    # and webhook secrets, GitHub OAuth/app/refresh tokens and fine-grained PATs, other Slack
    # token kinds.
    _Shape(re.compile(r"A(?<!\wA)(?:KIA|SIA)[A-Z0-9]{16}\b"), ("AKIA", "ASIA")),
    _Shape(re.compile(r"AIza(?<!\wAIza)[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"), ("AIza",)),
    _Shape(
        re.compile(r"[sr]k_(?<!\w[sr]k_)(?:live|test)_[A-Za-z0-9]{16,}"), ("k_live_", "k_test_")
    ),
    _Shape(re.compile(r"whsec_(?<!\wwhsec_)[A-Za-z0-9]{16,}"), ("whsec_",)),
    _Shape(
        re.compile(r"g(?<!\wg)(?:h[ousr]_[A-Za-z0-9]{30,}|ithub_pat_[A-Za-z0-9_]{22,})"),
        ("gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _Shape(re.compile(r"xox(?<!\wxox)[a-z]-[A-Za-z0-9-]{10,}"), ("xox",)),
    # PEM private keys, multi-line (or with escaped newlines), with or without the END line: the
    # body runs to the next "-----" or to the first character no PEM body holds.
    _Shape(
        re.compile(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----"
            r"(?:[A-Za-z0-9+/=\s:,\\]|-(?!----))*+"
            r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----)?"
        ),
        ("-----BEGIN",),
    ),
]
# What re.IGNORECASE also takes for an ASCII letter (the dotted and dotless i, the long s, the
# Kelvin sign), folded to it by `fold`.
_ODD_CASES = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def fold(text: str) -> str:
    """The text lower-cased so that a substring test finds every text a case-insensitive
    pattern for that (lower-case, ASCII) substring would."""
    return text.lower() if text.isascii() else text.translate(_ODD_CASES).lower()


# Secrets of this process's own configuration (the internal token, signing keys): masked
# wherever they appear, whatever their shape.
_LITERALS: set[str] = set()


def register(secret: str) -> None:
    """Mask this exact value in every log line from now on."""
    if len(secret) >= 16:
        _LITERALS.add(secret)


def holds_registered(text: str) -> bool:
    """Whether a value `register` was given occurs in the text."""
    return any(literal in text for literal in _LITERALS)


def registered() -> frozenset[str]:
    """The values `register` was given: for a worker process to register too."""
    return frozenset(_LITERALS)


def redact(text: str) -> str:
    for literal in _LITERALS:
        if literal in text:
            text = text.replace(literal, "[REDACTED]")
    folded = ""
    for shape in _SHAPES:
        if shape.folded:
            # Folded once, before any masking: masks only take words away.
            folded = folded or fold(text)
            haystack = folded
        else:
            haystack = text
        for needle in shape.needles:  # (a plain loop: any() over a generator costs more)
            if needle in haystack:
                text = shape.pattern.sub(shape.mask, text)
                break
    return text
