"""The validator kinds as a user reads them (GET /v1/evaluations/validators)."""

from __future__ import annotations

from services.eval.validators import KINDS
from services.eval.validators.kinds import DEFAULT_THRESHOLDS
from tunelab.eval.v1 import eval_service_pb2 as api

_CASE = {"case_sensitive": "boolean (default true)"}
_BOUNDS = {"min": "number ≥ 0 (optional)", "max": "number ≥ 0 (optional; min or max required)"}
_REFERENCE = {"reference": "string (default: the evaluation's reference)"}

# kind -> (description, parameters)
CATALOG: dict[str, tuple[str, dict[str, str]]] = {
    "equals": ("The output equals the value.", {"value": "string (required)", **_CASE}),
    "contains": ("The output contains the value.", {"value": "string (required)", **_CASE}),
    "not_contains": (
        "The output does not contain the value.",
        {"value": "string (required)", **_CASE},
    ),
    "contains_all": (
        "The output contains every value; the score is the share found.",
        {"values": "list of strings (required)", **_CASE},
    ),
    "contains_any": (
        "The output contains at least one value.",
        {"values": "list of strings (required)", **_CASE},
    ),
    "starts_with": ("The output starts with the value.", {"value": "string (required)", **_CASE}),
    "ends_with": ("The output ends with the value.", {"value": "string (required)", **_CASE}),
    "char_length": ("The output's length in characters is within bounds.", _BOUNDS),
    "token_length": ("The output's length in tokens (words and marks) is within bounds.", _BOUNDS),
    "regex": (
        "The output matches a regular expression (matching times out: a catastrophic pattern "
        "fails the check instead of hanging).",
        {
            "pattern": "string (required)",
            "full_match": "boolean (default false)",
            "multiline": "boolean (default false)",
            "timeout_ms": "number (default 100, at most 1000)",
            **_CASE,
        },
    ),
    "is_json": ("The output is valid JSON.", {}),
    "json_schema": (
        "The output is JSON valid against a JSON Schema.",
        {"schema": "JSON Schema (required)"},
    ),
    "latency_ms": ("The span's duration is within bounds.", _BOUNDS),
    "ttft_ms": ("The span's time to first token is within bounds.", _BOUNDS),
    "cost_usd": ("The span's cost is within bounds.", _BOUNDS),
    "input_tokens": ("The span's input tokens are within bounds.", _BOUNDS),
    "output_tokens": ("The span's output tokens are within bounds.", _BOUNDS),
    "levenshtein": ("Levenshtein ratio of the output to a reference answer.", _REFERENCE),
    "rouge_l": ("ROUGE-L F1 of the output against a reference answer.", _REFERENCE),
    "refusal": (
        "The output is not a refusal (or is one, with expect_refusal).",
        {"expect_refusal": "boolean (default false)"},
    ),
    "pii": (
        "The output holds no e-mail address, phone number or card number (Luhn-checked).",
        {"kinds": "list of email, phone, card (default all)"},
    ),
}

assert set(CATALOG) == set(KINDS), "every validator kind is described"


def kinds() -> list[api.ValidatorKind]:
    return [
        api.ValidatorKind(
            kind=kind,
            description=CATALOG[kind][0],
            params=CATALOG[kind][1],
            default_threshold=DEFAULT_THRESHOLDS.get(kind, 1.0),
        )
        for kind in KINDS
    ]
