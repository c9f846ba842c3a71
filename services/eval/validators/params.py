"""Reading a validator's parameters from a JSON-like dict, with errors that name the field."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class ValidatorConfigError(ValueError):
    """A validator configuration is not accepted; `field` is its path, e.g. `params.pattern`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_MISSING: Any = object()


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Params:
    """Typed reads of one validator's `params`. Each read records the resolved value (defaults
    included) in `resolved`, so two configurations that mean the same thing hash the same;
    `finish()` refuses keys no read asked for."""

    def __init__(self, raw: Mapping[str, Any], field: str) -> None:
        self._raw = raw
        self._field = field
        self.resolved: dict[str, Any] = {}

    def error(self, key: str, message: str) -> ValidatorConfigError:
        return ValidatorConfigError(f"{self._field}.{key}", message)

    def _get(self, key: str, default: Any) -> Any:
        if key in self._raw:
            return self._raw[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def text(self, key: str, default: str | None = _MISSING, *, non_empty: bool = True) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_type_name(value)}")
        if non_empty and not value:
            raise self.error(key, "must not be empty")
        self.resolved[key] = value
        return value

    def optional_text(self, key: str) -> str | None:
        if self._raw.get(key) is None:
            self.resolved[key] = None
            return None
        return self.text(key, non_empty=False)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, _MISSING)
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{key}[{index}]", "must be a non-empty string")
        self.resolved[key] = list(value)
        return tuple(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_type_name(value)}")
        self.resolved[key] = value
        return value

    def number(self, key: str, *, minimum: float = 0.0) -> float | None:
        """An optional finite number ≥ minimum (a bound); None when absent."""
        value = self._raw.get(key)
        if value is None:
            self.resolved[key] = None
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {_type_name(value)}")
        if not math.isfinite(value) or value < minimum:
            raise self.error(key, f"must be a finite number ≥ {minimum:g}, not {value!r}")
        self.resolved[key] = float(value)
        return float(value)

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self._get(key, default)
        if value not in options:
            raise self.error(key, f"must be one of {', '.join(options)}, not {value!r}")
        self.resolved[key] = value
        return str(value)

    def choices(self, key: str, options: Sequence[str]) -> tuple[str, ...]:
        """A non-empty subset of options; all of them when absent."""
        value = self._get(key, list(options))
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty list of: {', '.join(options)}")
        unknown = [item for item in value if item not in options]
        if unknown:
            raise self.error(key, f"accepts only {', '.join(options)}, not {unknown[0]!r}")
        picked = tuple(option for option in options if option in value)
        self.resolved[key] = list(picked)
        return picked

    def value(self, key: str) -> Any:
        """A required value of any JSON type (a JSON Schema); the caller checks it."""
        value = self._get(key, _MISSING)
        self.resolved[key] = value
        return value

    def bounds(self, low: str, high: str) -> tuple[float | None, float | None]:
        """A min/max pair, at least one given, min ≤ max."""
        lo, hi = self.number(low), self.number(high)
        if lo is None and hi is None:
            raise self.error(low, f"give {low}, {high} or both")
        if lo is not None and hi is not None and lo > hi:
            raise self.error(low, f"must not exceed {high} ({lo:g} > {hi:g})")
        return lo, hi

    def finish(self) -> None:
        unknown = sorted(str(key) for key in self._raw if key not in self.resolved)
        if unknown:
            accepted = ", ".join(sorted(self.resolved)) or "none"
            raise self.error(unknown[0], f"is not a parameter of this kind (accepted: {accepted})")
