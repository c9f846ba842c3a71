"""HTTP Range and If-Range selection (RFC 9110), as curl, wget and browsers send them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.datasets.ranges import Span, Unsatisfiable, etag, http_date, select

SHA = "ab" * 32
MODIFIED = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def pick(header: str, size: int = 1000, if_range: str = "") -> Span:
    return select(header, size, if_range=if_range, sha256=SHA, modified=MODIFIED)


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("", Span(0, 1000, False)),
        ("bytes=0-", Span(0, 1000, True)),
        ("bytes=500-", Span(500, 500, True)),  # curl -C - / wget -c
        ("bytes=0-99", Span(0, 100, True)),
        ("bytes=990-5000", Span(990, 10, True)),  # clamped to the end
        ("bytes=-100", Span(900, 100, True)),  # the last 100 bytes
        ("bytes=-5000", Span(0, 1000, True)),
        ("BYTES = 10 - 19", Span(10, 10, True)),
    ],
)
def test_satisfiable(header: str, span: Span) -> None:
    assert pick(header) == span


@pytest.mark.parametrize(
    "header",
    ["items=0-5", "bytes=0-1,5-9", "bytes=abc", "bytes=-", "bytes=9-3", "bytes 0-5", "0-5"],
)
def test_malformed_or_multiple_ranges_are_ignored(header: str) -> None:
    assert pick(header) == Span(0, 1000, False)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        pick(header)


def test_empty_file_has_no_satisfiable_range() -> None:
    assert pick("", size=0) == Span(0, 0, False)
    with pytest.raises(Unsatisfiable):
        pick("bytes=0-", size=0)


def test_if_range_with_current_etag_or_date_keeps_the_range() -> None:
    assert pick("bytes=10-", if_range=etag(SHA)).partial
    assert pick("bytes=10-", if_range=http_date(MODIFIED)).partial


@pytest.mark.parametrize(
    "validator",
    ['"another"', f"W/{etag(SHA)}", "Sat, 01 Jan 2000 00:00:00 GMT", "garbage"],
)
def test_if_range_that_does_not_match_sends_everything(validator: str) -> None:
    assert pick("bytes=10-", if_range=validator) == Span(0, 1000, False)


def test_absurdly_long_numbers_are_ignored_not_fatal() -> None:
    assert pick("bytes=" + "1" * 5000 + "-") == Span(0, 1000, False)
    assert pick("bytes=-" + "9" * 20) == Span(0, 1000, False)


def test_if_range_dates_in_every_http_format() -> None:
    for date in (
        "Sat, 28 Nov 2026 12:00:00 GMT",  # IMF-fixdate
        "Saturday, 28-Nov-26 12:00:00 GMT",  # RFC 850
        "Sat Nov 28 12:00:00 2026",  # asctime: no zone, GMT by definition
    ):
        assert pick("bytes=10-", if_range=date).partial, date
