"""Bearer token secrets: 256 random bits behind a recognisable prefix; only a hash is stored.

A plain SHA-256 is the right hash here (unlike for passwords): the secret is 256 random bits, so
there is nothing to brute-force, and a fast hash keeps every check one indexed lookup. The
prefix (`tl` and two letters) lets the log redaction and secret scanners recognise our tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BearerTokens:
    prefix: str  # "tldl_", "tljb_"
    _shape: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"tl[a-z]{2}_", self.prefix):
            raise ValueError(f"token prefix {self.prefix!r} is not tl + two letters + _")
        object.__setattr__(self, "_shape", re.compile(rf"{self.prefix}[A-Za-z0-9_-]{{43}}"))

    def new_secret(self) -> str:
        return self.prefix + secrets.token_urlsafe(32)

    def well_formed(self, secret: str) -> bool:
        return bool(self._shape.fullmatch(secret))

    def matches(self, secret: str, stored_digest: str | None) -> bool:
        """Whether `secret` is the token whose digest was stored, in constant time."""
        return stored_digest is not None and hmac.compare_digest(digest(secret), stored_digest)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
