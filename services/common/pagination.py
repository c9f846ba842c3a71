"""Cursor pagination: the page token is the sort key of the last row served, opaque to clients.

Keyset pagination (WHERE (created_at, id) < (:t, :id)) is stable under concurrent inserts: a new
row never shifts later pages, unlike OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import grpc
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from services.common.errors import ServiceError
from tunelab.common.v1 import errors_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size must not be negative",
            errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
            {"field": "page_size"},
        )
    return min(requested or default, maximum)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: str
    scope: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id, self.scope]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, scope: str) -> Cursor | None:
        """The cursor in a page token; None for the first page. `scope` names the list (and its
        parent), so that a token from one list is refused by another."""
        if not token:
            return None
        try:
            if len(token) > 1024:  # ours are ~100 characters
                raise ValueError("page token too long")
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            created, ident, token_scope = json.loads(raw)
            cursor = cls(datetime.fromisoformat(created), str(ident), str(token_scope))
            if cursor.scope != scope or cursor.created_at.tzinfo is None:
                raise ValueError(scope)
        except (ValueError, TypeError, RecursionError, binascii.Error, UnicodeDecodeError) as exc:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "page_token is not one this list returned: pass next_page_token unchanged, "
                "or leave it empty for the first page",
                errors_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
                {"field": "page_token"},
            ) from exc
        return cursor


class _Keyed(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_Keyed)
Q = TypeVar("Q", bound=Select[Any])


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: Cursor | None

    @property
    def next_page_token(self) -> str:
        """What a list response carries: empty on the last page."""
        return self.next_cursor.encode() if self.next_cursor else ""


def newest_first(
    query: Q,
    when: InstrumentedAttribute[datetime],
    key: InstrumentedAttribute[str],
    after: Cursor | None,
    size: int,
) -> Q:
    """Keyset pagination, newest first: the rows after the cursor, one more than a page (the
    extra row only says whether there is a next page)."""
    if after is not None:
        query = query.where(tuple_(when, key) < (after.created_at, after.id))
    return query.order_by(when.desc(), key.desc()).limit(size + 1)


def page(items: Sequence[T], size: int, scope: str, when: Callable[[T], datetime]) -> Page[T]:
    """The first `size` of `items` (fetched with one extra), and the cursor after them."""
    if len(items) <= size:
        return Page(list(items), None)
    last = items[size - 1]
    return Page(list(items[:size]), Cursor(when(last), last.id, scope))


def oldest_first(query: Q, key: InstrumentedAttribute[int], after: Cursor | None, size: int) -> Q:
    """Keyset pagination over an increasing integer key (a sequence, an autoincrement id),
    oldest first; the cursor's id holds the last key served."""
    if after is not None:
        query = query.where(key > int_key(after))
    return query.order_by(key).limit(size + 1)


def int_key(cursor: Cursor) -> int:
    """The cursor's id as the integer key it holds (a token forged with another is refused)."""
    try:
        return int(cursor.id)
    except ValueError:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is not one this list returned",
            errors_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
            {"field": "page_token"},
        ) from None
