"""HTTP Range and If-Range for downloads (RFC 9110, sections 13.1.5 and 14).

One byte range is honoured, as `curl -C -`, `wget -c` and download managers send it. A header
that is malformed, in another unit or asks for several ranges is ignored (the whole file is sent),
which RFC 9110 allows; a well-formed range that lies outside the file is unsatisfiable (416).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

# At most 19 digits: every int64 fits, and int() is never handed a number too long to parse.
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    offset: int
    length: int
    partial: bool


class Unsatisfiable(Exception):
    pass


def etag(sha256: str) -> str:
    """A strong validator: the content hash, which never changes for a dataset."""
    return f'"{sha256}"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment.replace(microsecond=0), usegmt=True)


def if_range_matches(if_range: str, sha256: str, modified: datetime) -> bool:
    value = if_range.strip()
    if not value:
        return True
    if value.startswith('"'):
        return value == etag(sha256)  # strong comparison; W/ tags never match
    if value.startswith("W/"):
        return False
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:  # asctime and "-0000" dates carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return when == modified.replace(microsecond=0)


def select(range_header: str, size: int, *, if_range: str, sha256: str, modified: datetime) -> Span:
    """The bytes to send for a request; raises Unsatisfiable for a 416."""
    whole = Span(0, size, partial=False)
    match = _RANGE.fullmatch(range_header or "")
    if not match or not if_range_matches(if_range, sha256, modified):
        return whole
    first, last = match.groups()
    if not first and not last:
        return whole  # "bytes=-" is malformed
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        start = max(size - suffix, 0)
        return Span(start, size - start, partial=True)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return whole  # malformed: ignore
    if start >= size:
        raise Unsatisfiable
    end = min(end, size - 1)
    return Span(start, end - start + 1, partial=True)
