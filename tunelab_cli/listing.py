"""What the list commands share: times given as `1h` or ISO 8601, paging through a list route,
and printing its items as a table for people or as JSON for programs.

A table's times are UTC, as the gateway answers them; a time given without a zone is UTC too.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx

from tunelab_cli.api import CliError, checked

PAGE_MAX = 500  # the most a list route gives in one page
DEFAULT_LIMIT = 50
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_BREAKS = re.compile(r"[^\S ]+")  # white space but the plain space: a cell is one line
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, option: str, now: datetime | None = None) -> str:
    """RFC 3339 (UTC) for `text`: a time that long ago ("90s", "15m", "1h", "2d", "1w") or an
    ISO 8601 time or date. `option` names the flag in the error."""
    text = text.strip()
    if match := _AGO.fullmatch(text):
        ago = timedelta(**{_UNITS[match[2]]: float(match[1])})
        when = (now or datetime.now(UTC)) - ago
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise CliError(
                f"{option} {text!r}: give a duration ago (30m, 1h, 2d, 1w) or an ISO 8601 time "
                "(2026-11-28T10:00:00Z)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """The flags given, by their query parameter: `names` maps each flag's dest to it."""
    return {param: value for dest, param in names.items() if (value := getattr(args, dest))}


def time_range(args: argparse.Namespace, start: str, end: str) -> dict[str, str]:
    """--since and --until as the query parameters `start` and `end`."""
    found = {}
    if args.since:
        found[start] = parse_time(args.since, "--since")
    if args.until:
        found[end] = parse_time(args.until, "--until")
    return found


def unit_interval(value: float | None, option: str) -> float | None:
    """A score bound: in [0, 1], as every score is."""
    if value is not None and not 0 <= value <= 1:
        raise CliError(f"{option} {value:g}: scores run from 0 to 1")
    return value


def number(value: Any) -> float | None:
    """A JSON number as the gateway writes it (int64 as a string, NaN as "NaN"), None when
    absent or not a finite number."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def stamp(value: Any) -> str:
    """ "2026-11-28 10:00:00" from an RFC 3339 time; "-" when there is none."""
    text = str(value or "")
    return text[:19].replace("T", " ") if len(text) >= 19 else (text or "-")


def duration(ms: Any) -> str:
    value = number(ms)
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f}ms"
    if value < 60_000:
        return f"{value / 1000:.2f}s"
    minutes, seconds = divmod(round(value / 1000), 60)
    return f"{minutes}m{seconds:02d}s"


def usd(value: Any) -> str:
    amount = number(value)
    return "-" if amount is None else f"${amount:.4f}"


def score(value: Any) -> str:
    found = number(value)
    return "-" if found is None else f"{found:.2f}"


def utf8(stream: TextIO) -> bool:
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    right: bool = False
    # Ids are never cut short (a shortened id is no use to copy); they push the row instead.
    clip: bool = True


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[Column]:
    """The columns widened to what `rows` hold (for a table printed whole, not page by page)."""
    return [
        replace(column, width=max([len(column.title), *(len(row[i]) for row in rows)]))
        for i, column in enumerate(columns)
    ]


def row_line(columns: Sequence[Column], values: Sequence[str], ellipsis: str = "…") -> str:
    """One row: every cell padded to its column; the last column is never padded or cut."""
    cells = []
    for index, (column, value) in enumerate(zip(columns, values, strict=True)):
        text = _BREAKS.sub(" ", value) if column.clip else value
        if index == len(columns) - 1:
            cells.append(text)
            continue
        if column.clip and len(text) > column.width:
            text = text[: max(column.width - len(ellipsis), 0)] + ellipsis
        cells.append(text.rjust(column.width) if column.right else text.ljust(column.width))
    return "  ".join(cells).rstrip()


def header_line(columns: Sequence[Column]) -> str:
    return row_line(columns, [column.title for column in columns])


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """A table printed whole, its columns as wide as what they hold."""
    fitted = fit(columns, rows)
    print(header_line(fitted))
    for row in rows:
        print(row_line(fitted, row))


def add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N {what} (default {DEFAULT_LIMIT})",
    )
    parser.add_argument("--all", action="store_true", help=f"every {what[:-1]} that matches")
    parser.add_argument("--page-token", default="", help="go on from where an earlier list stopped")
    parser.add_argument(
        "--json",
        action="store_true",
        help=f'print {{"{what}": [...], "next_page_token": ...}}, one {what[:-1]} a line',
    )


def limit_of(args: argparse.Namespace) -> int | None:
    """How many items to show: None for --all."""
    if args.all:
        return None
    if args.limit < 1:
        raise CliError(f"--limit {args.limit}: give at least 1 (or --all)")
    return int(args.limit)


class Pages:
    """The items of a list route, page after page, until `limit` items (None: all of them).
    The last page asked for is sized to the limit, so `next_page_token` is then exactly where
    the next item is: pass it back as page_token to go on."""

    def __init__(
        self,
        client: httpx.Client,
        route: str,
        params: dict[str, Any],
        key: str,
        limit: int | None,
        page_token: str = "",
    ) -> None:
        self._client, self._route, self._params = client, route, params
        self.key, self._limit = key, limit
        self.next_page_token = page_token

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shown = 0
        while self._limit is None or shown < self._limit:
            size = PAGE_MAX if self._limit is None else min(PAGE_MAX, self._limit - shown)
            params = {**self._params, "page_size": size}
            if self.next_page_token:
                params["page_token"] = self.next_page_token
            page = checked(self._client.get(self._route, params=params))
            items = page.get(self.key, [])
            self.next_page_token = page.get("next_page_token", "")
            yield from items
            shown += len(items)
            if not self.next_page_token:
                return


def show(
    pages: Pages,
    *,
    as_json: bool,
    columns: Sequence[Column],
    row: Callable[[dict[str, Any]], Sequence[str]],
    nothing: str,
) -> None:
    """Print the pages' items as they come: a table, or with `as_json` one JSON document shaped
    as the route's answer (one item a line, written as read: memory stays flat with --all)."""
    out = sys.stdout
    if as_json:
        out.write(f"{{{json.dumps(pages.key)}: [")
        separator = "\n"
        for item in pages:
            out.write(separator + json.dumps(item, ensure_ascii=False))
            separator = ",\n"
        tail = "\n" if separator == ",\n" else ""
        out.write(f'{tail}], "next_page_token": {json.dumps(pages.next_page_token)}}}\n')
        return
    ellipsis = "…" if utf8(out) else "~"
    shown = 0
    for item in pages:
        if not shown:
            print(header_line(columns))
        print(row_line(columns, row(item), ellipsis))
        shown += 1
    if not shown:
        print(nothing, file=sys.stderr)
    elif pages.next_page_token:
        print(
            f"(the first {shown} shown: --limit N or --all for more, or --page-token "
            f"{pages.next_page_token} for the next)",
            file=sys.stderr,
        )
