"""Names people give to files (dataset names): display names only, never paths, yet held to
file-name rules so that nothing downstream (a Content-Disposition header, a pod's shell script,
a log line, a terminal) can be tricked by one. The gateway checks them before an upload streams;
the service checks them again."""

from __future__ import annotations

import unicodedata

from services.common.errors import invalid_argument

MAX_NAME_BYTES = 255
# Control (Cc), format (Cf: bidi overrides that make "evil\u202egnp.jsonl" display as
# "evil...lnosj.png", zero-width characters, BOMs), line and paragraph separators, surrogates.
_REFUSED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


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
    if any(unicodedata.category(ch) in _REFUSED for ch in name):
        raise invalid_argument(
            "name",
            "name must not contain control or invisible characters (NUL, newlines, "
            "bidi overrides, zero-width spaces)",
        )
    return name
