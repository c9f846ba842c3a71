"""Masks credentials in text before it reaches a log line or an error message."""

from __future__ import annotations

import re

# Our own bearer tokens carry a prefix so that they are recognisable here and by secret scanners.
DOWNLOAD_TOKEN_PREFIX = "tldl_"  # noqa: S105 (a prefix, not a secret)

_PATTERNS = [
    # tunelab tokens: tldl_ (dataset downloads) and any later tl??_ kind.
    re.compile(r"\btl[a-z]{2}_[A-Za-z0-9_-]{20,}"),
    # Authorization header values.
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    # Provider API keys in their published shapes.
    re.compile(r"\b(sk-ant-|sk-|hf_|rpa_|ghp_|xox[abp]-)[A-Za-z0-9_-]{16,}"),
    # More published shapes: AWS access key ids, Google API keys, Stripe secret/restricted keys
    # and webhook secrets, GitHub OAuth/app/refresh tokens and fine-grained PATs, other Slack
    # token kinds.
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"\bAIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
    re.compile(r"\b(?:[sr]k_(?:live|test)_|whsec_)[A-Za-z0-9]{16,}"),
    re.compile(r"\b(?:gh[ousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"),
    re.compile(r"\bxox[a-z]-[A-Za-z0-9-]{10,}"),
    # PEM private keys, multi-line (or with escaped newlines), with or without the END line: the
    # body runs to the next "-----" or to the first character no PEM body holds.
    re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----"
        r"(?:[A-Za-z0-9+/=\s:,\\]|-(?!----))*+"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----)?"
    ),
]

# JSON Web Tokens. The two tails are optional so that a failed attempt still consumes the whole
# run: with them required, a long run of "eyJ-eyJ-..." took quadratic time (each "eyJ" rescanned
# the rest). Every pattern here must stay linear: callers pass text that others control.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}+(?P<tail>\.[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+)?")


# Secrets of this process's own configuration (the internal token, signing keys): masked
# wherever they appear, whatever their shape.
_LITERALS: set[str] = set()


def register(secret: str) -> None:
    """Mask this exact value in every log line from now on."""
    if len(secret) >= 16:
        _LITERALS.add(secret)


def redact(text: str) -> str:
    for literal in _LITERALS:
        if literal in text:
            text = text.replace(literal, "[REDACTED]")
    text = _JWT.sub(_mask_jwt, text)
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask_jwt(match: re.Match[str]) -> str:
    return _mask(match) if match.group("tail") else match.group(0)


def _mask(match: re.Match[str]) -> str:
    value = match.group(0)
    lead = value.split()[0] + " " if " " in value else value[:5]
    return f"{lead}[REDACTED]"
