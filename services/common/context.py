"""Per-request values (request id, calling user) carried through async code by contextvars."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="")
caller: ContextVar[str] = ContextVar("caller", default="")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return secrets.token_hex(12)


def accept_request_id(value: str | None) -> str:
    """A request id a client sent, if it is safe to log and echo; a fresh one otherwise."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


@contextlib.contextmanager
def acting_for(user: str) -> Iterator[None]:
    """Outbound calls made inside the block act for `user` (a service calling another on a
    user's behalf from a background task, or for another user than its caller)."""
    token = caller.set(user)
    try:
        yield
    finally:
        caller.reset(token)
