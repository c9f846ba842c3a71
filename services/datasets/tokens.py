"""Download token secrets: 256 random bits with a recognisable prefix; only a hash is stored.

A plain SHA-256 is the right hash here (unlike for passwords): the secret is 256 random bits, so
there is nothing to brute-force, and a fast hash keeps every redemption one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from services.common.redact import DOWNLOAD_TOKEN_PREFIX

_SHAPE = re.compile(rf"{DOWNLOAD_TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}")


def new_secret() -> str:
    return DOWNLOAD_TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def well_formed(secret: str) -> bool:
    return bool(_SHAPE.fullmatch(secret))
