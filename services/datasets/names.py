"""Dataset names: display names only, yet held to file-name rules so that nothing downstream
(a Content-Disposition header, a pod's shell script, a log line) can be tricked by one."""

from __future__ import annotations

import unicodedata

from services.common.errors import invalid_argument

MAX_NAME_BYTES = 255
# Bidirectional overrides make "evil\u202egnp.jsonl" display as "evil...lnosj.png".
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def check_name(name: str) -> str:
    if not name:
        raise invalid_argument("name", "name is required: give the file name, e.g. train.jsonl")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise invalid_argument("name", f"name is longer than {MAX_NAME_BYTES} bytes")
    if "/" in name or "\\" in name:
        raise invalid_argument("name", "name must be a file name, without '/' or '\\'")
    if name in (".", "..") or name != name.strip():
        raise invalid_argument(
            "name", "name must be a file name: not '.' or '..', no leading or trailing spaces"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI for ch in name):
        raise invalid_argument(
            "name", "name must not contain control characters (NUL, newlines, bidi overrides)"
        )
    return name
