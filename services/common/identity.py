"""How callers identify themselves to a service: gRPC metadata keys and their checks.

The gateway authenticates users and forwards the user id; every caller (the gateway, another
service) proves it is one of ours with the shared internal token. A service trusts the user id
only from a caller that presented that token.
"""

from __future__ import annotations

import hmac
import re

from services.common import context
from services.common.errors import unauthenticated

INTERNAL_TOKEN_KEY = "x-tunelab-internal-token"  # noqa: S105 (a header name)
# Binary metadata (the -bin suffix): user ids are UTF-8, and plain gRPC metadata is ASCII only.
USER_KEY = "x-tunelab-user-bin"
REQUEST_ID_KEY = "x-request-id"

_USER_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,255}")


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def valid_user_id(value: str) -> bool:
    return bool(_USER_ID.fullmatch(value))


def decode_user(value: str | bytes | None) -> str | None:
    """The user id from metadata: None when absent, "" when malformed (not UTF-8, or not a
    valid id), which callers must refuse."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return ""
    return value if valid_user_id(value) else ""


def require_user() -> str:
    """The calling user, for handlers that act on a user's behalf."""
    user = context.caller.get()
    if not user:
        raise unauthenticated(f"this call acts for a user: send the {USER_KEY} metadata")
    return user
