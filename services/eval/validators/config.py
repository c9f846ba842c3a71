"""A validator configuration: parsed from a JSON-like dict, checked once, hashed stably."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.eval.validators.kinds import BUILDERS, DEFAULT_THRESHOLDS
from services.eval.validators.params import Params, ValidatorConfigError
from services.eval.validators.subject import Finding, Subject
from services.eval.validators.text import Check

_KEYS = ("kind", "name", "params", "weight", "threshold")


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    """One validator: its kind, a display name (the kind unless given), its parameters with
    defaults filled in, a weight > 0 in the overall score, and the score it must reach to pass.
    """

    kind: str
    name: str
    params: Mapping[str, Any]
    weight: float
    threshold: float
    check: Check = field(repr=False, compare=False)

    def config_key(self) -> str:
        """SHA-256 of the canonical JSON of kind, params, weight and threshold: the identity of
        a judgment per trace x configuration. The name is a label and is left out, as are
        parameters' spelling (defaults are filled in, numbers are floats, keys sorted)."""
        canonical = json.dumps(
            {
                "kind": self.kind,
                "params": self.params,
                "weight": self.weight,
                "threshold": self.threshold,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def run(self, subject: Subject) -> Finding:
        return self.check(subject)


def _fraction(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidatorConfigError(f"{where}{key}", f"must be a number, not {value!r}")
    return float(value)


def parse_config(raw: object, where: str = "") -> ValidatorConfig:
    """A ValidatorConfig from `{"kind": ..., "name"?: ..., "params"?: {...}, "weight"?: 1,
    "threshold"?: ...}`; raises ValidatorConfigError naming the field (prefixed by `where`)."""
    if not isinstance(raw, Mapping):
        raise ValidatorConfigError(where.rstrip(".") or "validator", "must be an object")
    unknown = sorted(str(key) for key in raw if key not in _KEYS)
    if unknown:
        raise ValidatorConfigError(f"{where}{unknown[0]}", f"is not accepted ({', '.join(_KEYS)})")
    kind = raw.get("kind")
    if kind not in BUILDERS:
        raise ValidatorConfigError(
            f"{where}kind", f"must be one of {', '.join(sorted(BUILDERS))}, not {kind!r}"
        )
    name = raw.get("name", kind)
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise ValidatorConfigError(f"{where}name", "must be a non-empty string of ≤ 200 characters")
    weight = _fraction(raw, "weight", 1.0, where)
    if weight <= 0:
        raise ValidatorConfigError(f"{where}weight", f"must be greater than 0, not {weight:g}")
    threshold = _fraction(raw, "threshold", DEFAULT_THRESHOLDS.get(kind, 1.0), where)
    if not 0.0 <= threshold <= 1.0:
        raise ValidatorConfigError(f"{where}threshold", f"must be in [0, 1], not {threshold:g}")
    raw_params = raw.get("params", {})
    if not isinstance(raw_params, Mapping):
        raise ValidatorConfigError(f"{where}params", "must be an object")
    params = Params(raw_params, f"{where}params")
    check = BUILDERS[kind](params)
    params.finish()
    config = ValidatorConfig(kind, name, params.resolved, weight, threshold, check)
    try:
        config.config_key()
    except (TypeError, ValueError):
        # Only a dict built in Python (not parsed JSON) can hold these: NaN, sets, objects.
        raise ValidatorConfigError(
            f"{where}params", "must hold only JSON values (finite numbers, no sets or objects)"
        ) from None
    return config


def parse_configs(raw: object, where: str = "validators") -> list[ValidatorConfig]:
    """A non-empty list of configurations with distinct names (a verdict names its failures)."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise ValidatorConfigError(where, "must be a non-empty list of validators")
    configs = [parse_config(item, f"{where}[{index}].") for index, item in enumerate(raw)]
    seen: set[str] = set()
    for index, config in enumerate(configs):
        if config.name in seen:
            raise ValidatorConfigError(f"{where}[{index}].name", f"repeats {config.name!r}")
        seen.add(config.name)
    return configs
