"""Masks credentials in text before it reaches a log line or an error message."""

from __future__ import annotations

import re

# Our own bearer tokens carry a prefix so that they are recognisable here and by secret scanners.
DOWNLOAD_TOKEN_PREFIX = "tldl_"  # noqa: S105 (a prefix, not a secret)

_PATTERNS = [
    # tunelab tokens: tldl_ (dataset downloads) and any later tl??_ kind.
    re.compile(r"\btl[a-z]{2}_[A-Za-z0-9_-]{20,}"),
    # JSON Web Tokens.
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    # Authorization header values.
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    # Provider API keys in their published shapes.
    re.compile(r"\b(sk-ant-|sk-|hf_|rpa_|ghp_|xox[abp]-)[A-Za-z0-9_-]{16,}"),
]


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
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask(match: re.Match[str]) -> str:
    value = match.group(0)
    lead = value.split()[0] + " " if " " in value else value[:5]
    return f"{lead}[REDACTED]"
