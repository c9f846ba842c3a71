"""Detect a JSONL dataset's format while it streams in, and find its first bad line.

The detector sees the file in chunks of any size and keeps only the unfinished last line, so
memory is bounded by the longest allowed line, not by the file. The first non-blank row decides
the format; every later row must be of the same format. Blank lines are ignored.

Messages never quote row content (it may hold personal data or secrets): they name the line,
the field and what is expected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLES = frozenset(ROLES)
_BOM = b"\xef\xbb\xbf"


class Format(enum.StrEnum):
    SFT_CHAT = "sft_chat"
    DPO_PREFERENCE = "dpo_preference"
    TEXT = "text"
    INVALID = "invalid"


DESCRIPTION = {
    Format.SFT_CHAT: 'SFT chat ("messages")',
    Format.DPO_PREFERENCE: 'DPO preference ("prompt"/"chosen"/"rejected")',
    Format.TEXT: 'plain text ("text")',
}


@dataclass(frozen=True)
class Analysis:
    format: Format
    rows: int
    error_line: int | None = None
    error_reason: str | None = None


class RowError(ValueError):
    """A row is not usable; the message says why, without the row's content."""


class FormatDetector:
    def __init__(self, max_line_bytes: int) -> None:
        self._max_line = max_line_bytes
        self._partial = bytearray()
        self._skipping = False  # inside a line already known to be too long
        self._line = 0
        self._rows = 0
        self._format: Format | None = None
        self._format_line = 0
        self._error: tuple[int, str] | None = None

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._keep(chunk, start)
                return
            piece = chunk[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                self._partial.clear()
                continue  # the too-long line was counted and judged when it overflowed
            if self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = piece
            if len(line) > self._max_line:
                self._too_long()
            else:
                self._take(line)

    def finish(self) -> Analysis:
        if self._partial and not self._skipping:
            self._take(bytes(self._partial))
        self._partial.clear()
        if self._error is None and self._rows == 0:
            self._error = (0, "the file has no rows: a dataset needs at least one JSON line")
        if self._error is not None:
            line, reason = self._error
            return Analysis(Format.INVALID, self._rows, line, reason)
        assert self._format is not None
        return Analysis(self._format, self._rows)

    def _keep(self, chunk: bytes, start: int) -> None:
        if self._skipping:
            return
        self._partial += chunk[start:]
        if len(self._partial) > self._max_line:
            self._partial.clear()
            self._too_long()
            self._skipping = True

    def _too_long(self) -> None:
        self._line += 1
        self._rows += 1
        self._fail(
            f"line {self._line} is longer than {self._max_line} bytes, the limit for one row"
        )

    def _take(self, line: bytes) -> None:
        self._line += 1
        if self._line == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line or line.isspace():
            return
        self._rows += 1
        if self._error is not None:
            return  # past the first error we only count
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            detail = "not UTF-8 text" if "UTF-8" in exc.msg else f"column {exc.colno}: {exc.msg}"
            self._fail(f"line {self._line} is not valid JSON ({detail})")
            return
        try:
            fmt = classify(row)
            if self._format is None:
                self._format, self._format_line = fmt, self._line
            elif fmt is not self._format:
                raise RowError(
                    f"is a {DESCRIPTION[fmt]} row, but line {self._format_line} made this a "
                    f"{DESCRIPTION[self._format]} dataset; one file holds one format"
                )
        except RowError as exc:
            self._fail(f"line {self._line} {exc}")

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = (self._line, reason)


def classify(row: Any) -> Format:
    """The format of one parsed row; RowError says what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(f"is a JSON {_kind(row)}, not an object")
    if "messages" in row:
        if "assistant" not in _check_messages(row["messages"], "messages"):
            raise RowError('has no "assistant" message in "messages": nothing to learn from')
        return Format.SFT_CHAT
    if {"prompt", "chosen", "rejected"} & row.keys():
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise RowError(
                "looks like a DPO preference row but lacks "
                + ", ".join(f'"{k}"' for k in missing)
                + ' (a DPO row has "prompt", "chosen" and "rejected")'
            )
        for key in ("prompt", "chosen", "rejected"):
            _check_text_or_messages(row[key], key)
        if isinstance(row["chosen"], str) != isinstance(row["rejected"], str):
            raise RowError('has "chosen" and "rejected" of different kinds: both text or both chat')
        return Format.DPO_PREFERENCE
    if "text" in row:
        if not isinstance(row["text"], str):
            raise RowError(f'has a "text" that is a JSON {_kind(row["text"])}, not a string')
        return Format.TEXT
    keys = ", ".join(f'"{k}"' for k in list(row)[:5]) or "none"
    raise RowError(
        'is none of the known formats: a row needs "messages" (SFT chat), "prompt"/"chosen"/'
        f'"rejected" (DPO) or "text" (plain text); its keys are {keys[:200]}'
    )


def _check_messages(messages: Any, field: str) -> set[str]:
    """Check a list of chat messages; returns the roles seen. Every row of a chat dataset comes
    through here, so the checks are plain type tests and messages are built only on failure."""
    if type(messages) is not list or not messages:
        raise RowError(f'has a "{field}" that is not a non-empty list of messages')
    roles = set()
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise RowError(f'has "{field}"[{i}] that is a JSON {_kind(message)}, not an object')
        role = message.get("role")
        if role not in _ROLES:
            raise RowError(f'has "{field}"[{i}].role that is not one of {", ".join(ROLES)}')
        content = message.get("content")
        if type(content) is not str and not (
            type(content) is list
            or (content is None and role == "assistant" and message.get("tool_calls"))
        ):
            raise RowError(f'has "{field}"[{i}].content that is not a string or a list of parts')
        roles.add(role)
    return roles


def _check_text_or_messages(value: Any, field: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list):
        _check_messages(value, field)
        return
    raise RowError(f'has a "{field}" that is neither a string nor a list of messages')


def _kind(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), "value")
