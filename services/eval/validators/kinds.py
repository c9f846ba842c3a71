"""The validator kinds: each name and the function that builds its check from parameters."""

from __future__ import annotations

from collections.abc import Callable

from services.eval.validators import metrics, patterns, safety, similarity, structured, text
from services.eval.validators.params import Params

Builder = Callable[[Params], text.Check]

BUILDERS: dict[str, Builder] = {
    "equals": text.build_equals,
    "contains": text.build_contains,
    "not_contains": text.build_not_contains,
    "contains_all": text.build_contains_all,
    "contains_any": text.build_contains_any,
    "starts_with": text.build_starts_with,
    "ends_with": text.build_ends_with,
    "char_length": text.build_char_length,
    "token_length": text.build_token_length,
    "regex": patterns.build_regex,
    "is_json": structured.build_is_json,
    "json_schema": structured.build_json_schema,
    **{name: metrics.bound_builder(name) for name in metrics.FIELDS},
    "levenshtein": similarity.build_levenshtein,
    "rouge_l": similarity.build_rouge_l,
    "refusal": safety.build_refusal,
    "pii": safety.build_pii,
}

# Graded kinds score in between 0 and 1, so their default threshold is below 1; every other
# kind scores 0 or 1 (contains_all: the share found) and must score 1 to pass by default.
DEFAULT_THRESHOLDS: dict[str, float] = {"levenshtein": 0.75, "rouge_l": 0.75}
