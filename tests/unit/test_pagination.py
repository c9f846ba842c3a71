from __future__ import annotations

import base64
from datetime import UTC, datetime

import grpc
import pytest

from services.common.errors import ServiceError
from services.common.pagination import MAX_PAGE_SIZE, Cursor, page_size


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(ServiceError):
        page_size(-1)


def test_cursor_round_trip_is_bound_to_its_list() -> None:
    cursor = Cursor(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "ds_x", "datasets:alice")
    assert Cursor.decode(cursor.encode(), "datasets:alice") == cursor
    assert Cursor.decode("", "datasets:alice") is None
    with pytest.raises(ServiceError) as caught:
        Cursor.decode(cursor.encode(), "datasets:bob")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


NESTED = base64.urlsafe_b64encode(b"[" * 600).decode()


@pytest.mark.parametrize(
    "token", ["garbage", "e30", "W10", "!!!!", "WyIyMDI2IiwgMSwgMl0", NESTED, "A" * 5000]
)
def test_forged_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(ServiceError) as caught:
        Cursor.decode(token, "datasets:alice")
    assert caught.value.metadata == {"field": "page_token"}
