"""A pre-flight check's result: its name, pass / warn / fail, and a plain message."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.Enum):
    PASS = "pass"  # noqa: S105 (a check status)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    #: Failed only because a service it asks did not answer: asking again may pass.
    transient: bool = False
