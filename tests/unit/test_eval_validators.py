"""The deterministic validators: each kind's pass and fail, configuration errors, hostile
inputs (catastrophic regex, 5 MB output, NaN fields), Unicode and the weighted mean."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest

from services.eval.validators import (
    KINDS,
    Outcome,
    Subject,
    ValidatorConfigError,
    evaluate,
    parse_config,
    parse_configs,
)
from services.eval.validators.safety import luhn_valid
from services.eval.validators.similarity import lcs_length, levenshtein


def judge(kind: str, output: str = "", threshold: float | None = None, **params: Any) -> Outcome:
    return judge_subject(kind, Subject(output=output), threshold, **params)


def judge_subject(
    kind: str, subject: Subject, threshold: float | None = None, **params: Any
) -> Outcome:
    raw: dict[str, Any] = {"kind": kind, "params": params}
    if threshold is not None:
        raw["threshold"] = threshold
    verdict = evaluate([parse_config(raw)], subject)
    return verdict.judged[0].outcome


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # kind, params, an output that passes, one that fails
    ("equals", {"value": "Paris"}, "Paris", "paris"),
    ("equals", {"value": "Paris", "case_sensitive": False}, "PARIS", "Lyon"),
    ("contains", {"value": "Paris"}, "It is Paris.", "It is paris."),
    ("contains", {"value": "paris", "case_sensitive": False}, "It is PARIS.", "Lyon"),
    ("not_contains", {"value": "Lyon"}, "Paris", "Lyon, not Paris"),
    ("contains_all", {"values": ["a", "b"]}, "a and b", "a only"),
    ("contains_any", {"values": ["x", "y"]}, "only y", "neither"),
    ("starts_with", {"value": "Yes"}, "Yes, indeed", "No. Yes"),
    ("ends_with", {"value": "."}, "Done.", "Done!"),
    ("regex", {"pattern": r"\d{3}-\d{4}"}, "call 555-0134", "call me"),
    ("regex", {"pattern": r"[a-z]+", "full_match": True}, "abc", "abc1"),
    ("regex", {"pattern": "HELLO", "case_sensitive": False}, "hello", "help"),
    ("is_json", {}, '{"a": [1, 2]}', "{'a': 1}"),
    (
        "json_schema",
        {"schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}},
        '{"a": 1}',
        '{"a": "one"}',
    ),
    ("char_length", {"min": 2, "max": 5}, "abcd", "abcdef"),
    ("char_length", {"min": 2}, "ab", "a"),
    ("token_length", {"max": 3}, "one, two", "one two three four"),
    ("token_length", {"min": 3}, "one two three four", "one two"),
    ("levenshtein", {"reference": "kitten"}, "kitten", "sitting on a mat"),
    ("rouge_l", {"reference": "the cat sat on the mat"}, "The cat sat on the mat.", "a dog ran"),
    ("refusal", {}, "Paris is the capital.", "I'm sorry, but I cannot help with that."),
    ("refusal", {"expect_refusal": True}, "As an AI, I must decline.", "Sure, here it is."),
    ("pii", {}, "Nothing personal here, order 1700000000.", "mail me at bob@example.com"),
]


@pytest.mark.parametrize(("kind", "params", "good", "bad"), CASES)
def test_pass_and_fail(kind: str, params: dict[str, Any], good: str, bad: str) -> None:
    passed = judge(kind, good, **params)
    failed = judge(kind, bad, **params)
    assert passed.passed, passed.reason
    assert passed.score == 1.0
    assert not failed.passed, failed.reason
    assert 0.0 <= failed.score < 1.0
    assert failed.reason


def test_every_kind_has_a_case() -> None:
    covered = {case[0] for case in CASES} | {
        "latency_ms",
        "ttft_ms",
        "cost_usd",
        "input_tokens",
        "output_tokens",
    }
    assert covered == set(KINDS)


@pytest.mark.parametrize(
    "field", ["latency_ms", "ttft_ms", "cost_usd", "input_tokens", "output_tokens"]
)
def test_span_field_bounds(field: str) -> None:
    def span(value: float) -> Subject:
        values: dict[str, Any] = {field: value}
        return Subject("", **values)

    assert judge_subject(field, span(5), max=10).passed
    assert judge_subject(field, span(5), min=1, max=10).passed
    above = judge_subject(field, span(11), max=10)
    assert not above.passed
    assert "above 10" in above.reason
    assert not judge_subject(field, span(0), min=1).passed
    missing = judge_subject(field, Subject(""), max=10)
    assert not missing.passed
    assert missing.reason == f"the span has no {field}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_span_fields_fail_with_a_reason(value: float) -> None:
    outcome = judge_subject("latency_ms", Subject("", latency_ms=value), max=1000)
    assert not outcome.passed
    assert outcome.score == 0.0
    assert "not a finite number" in outcome.reason


def test_contains_all_scores_the_share_found() -> None:
    outcome = judge("contains_all", "a b", values=["a", "b", "c", "d"])
    assert outcome.score == 0.5
    assert not outcome.passed
    assert "'c'" in outcome.reason
    assert judge("contains_all", "a b c", threshold=0.75, values=["a", "b", "c", "d"]).passed


def test_similarity_scores() -> None:
    kitten = judge("levenshtein", "sitting", reference="kitten")
    assert kitten.score == pytest.approx(1 - 3 / 7)
    assert "below the threshold" in kitten.reason
    rouge = judge("rouge_l", "the cat was on the mat", reference="the cat sat on the mat")
    assert rouge.score == pytest.approx(5 / 6)
    assert rouge.passed  # default threshold 0.75


def test_similarity_uses_the_span_reference_and_fails_without_one() -> None:
    assert judge_subject("levenshtein", Subject("abc", reference="abc")).passed
    missing = judge_subject("rouge_l", Subject("abc"))
    assert not missing.passed
    assert "no reference" in missing.reason


def test_bit_parallel_algorithms_agree_with_dynamic_programming() -> None:
    def distance(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        return row[-1]

    def common(a: str, b: str) -> int:
        row = [0] * (len(b) + 1)
        for x in a:
            prev = 0
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
        return row[-1]

    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 80)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 80)))
        assert levenshtein(a, b) == distance(a, b)
        assert lcs_length(a, b) == common(a, b)


def test_pii_kinds_are_named_never_the_values() -> None:
    outcome = judge("pii", "bob@example.com, +1 415-555-0134, card 4111 1111 1111 1111")
    assert not outcome.passed
    assert outcome.reason == "output contains PII: email, phone, card"
    assert "bob" not in outcome.reason
    assert "4111" not in outcome.reason


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.doe+tag@mail.example.org", "email"),
        ("call (415) 555-0134 today", "phone"),
        ("call +447911123456", "phone"),
        ("ring 020 7946 0958 or 0207 946 0958", "phone"),
        ("paid with 4242-4242-4242-4242", "card"),
    ],
)
def test_pii_finds(text: str, kind: str) -> None:
    assert judge("pii", text, kinds=[kind]).reason == f"output contains PII: {kind}"


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails the Luhn check
        "at 2024-01-15 10:30 the version 1.2.3 shipped",
        "trace 1700000000123 of user@localhost",
        "the years 1999 2000 2001 2002 were dry",
    ],
)
def test_pii_passes_lookalikes(text: str) -> None:
    assert judge("pii", text).passed


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_refusal_matches_typographic_apostrophes_and_case() -> None:
    assert not judge("refusal", "I\u2019M SORRY, BUT I CANNOT do that").passed


def test_unicode_case_folding_and_combining_characters() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert judge("equals", decomposed, value=composed).passed
    assert judge("contains", f"un {decomposed} noir", value=composed).passed
    assert judge("contains", "STRASSE", value="straße", case_sensitive=False).passed
    assert judge("starts_with", decomposed + "!", value=composed).passed
    assert judge("char_length", decomposed, max=4).passed
    assert judge("levenshtein", decomposed, reference=composed).score == 1.0


def test_catastrophic_regex_times_out_as_a_failed_outcome() -> None:
    started = time.perf_counter()
    outcome = judge("regex", "a" * 50_000 + "!", pattern="(a+)+$", timeout_ms=200)
    elapsed = time.perf_counter() - started
    assert not outcome.passed
    assert outcome.score == 0.0
    assert elapsed < 2.0
    # Either the engine saw through the pattern (no match) or it timed out: both say so.
    assert "not found" in outcome.reason or "did not finish within 200 ms" in outcome.reason


def test_regex_timeout_is_a_failed_outcome() -> None:
    outcome = judge("regex", "x" * 30 + "y", pattern=r"(x|xx)+z", timeout_ms=50)
    assert not outcome.passed
    assert "did not finish within 50 ms" in outcome.reason


def test_five_megabyte_output_is_judged_in_bounded_time() -> None:
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "7", "x@y", "4111", "-", ",", "."]
    output = " ".join(rng.choice(words) for _ in range(900_000))[:5_000_000]
    configs = parse_configs(
        [{"kind": kind, "name": kind, "params": params} for kind, params, _, _ in CASES[::2]]
        + [{"kind": "regex", "name": "catastrophic", "params": {"pattern": "(a+)+$"}}]
    )
    started = time.perf_counter()
    verdict = evaluate(configs, Subject(output=output, reference=output))
    elapsed = time.perf_counter() - started
    assert elapsed < 10.0
    assert all(0.0 <= item.outcome.score <= 1.0 for item in verdict.judged)
    levenshtein_outcome = next(j.outcome for j in verdict.judged if j.config.kind == "levenshtein")
    assert "first 10000 characters" in levenshtein_outcome.reason


def test_weighted_mean_and_failed_names() -> None:
    configs = parse_configs(
        [
            {"kind": "contains", "name": "has paris", "params": {"value": "Paris"}, "weight": 3},
            {"kind": "contains", "name": "has lyon", "params": {"value": "Lyon"}, "weight": 1},
        ]
    )
    verdict = evaluate(configs, Subject("Paris"))
    assert verdict.score == pytest.approx(0.75)
    assert not verdict.passed
    assert verdict.failed == ("has lyon",)
    assert evaluate(configs, Subject("Paris"), pass_score=0.7).passed
    assert not evaluate(configs, Subject("Paris"), pass_score=0.8).passed


def test_a_check_that_raises_is_a_failed_outcome() -> None:
    config = parse_config({"kind": "contains", "params": {"value": "x"}})
    broken = Subject(output=None)  # type: ignore[arg-type]
    outcome = evaluate([config], broken).judged[0].outcome
    assert not outcome.passed
    assert outcome.reason == "the validator failed: TypeError"


def test_outcome_scores_are_clamped_and_never_nan() -> None:
    assert Outcome(True, math.nan, "").score == 0.0
    assert Outcome(True, 2.0, "").score == 1.0
    assert Outcome(False, -1.0, "").score == 0.0


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        ({"kind": "nope"}, "kind", "must be one of"),
        ({}, "kind", "must be one of"),
        ({"kind": "contains"}, "params.value", "is required"),
        ({"kind": "contains", "params": {"value": 3}}, "params.value", "must be a string, not int"),
        ({"kind": "contains", "params": {"value": "a", "case": True}}, "params.case", "accepted"),
        (
            {"kind": "contains", "params": {"value": "a", "case_sensitive": "no"}},
            "params.case_sensitive",
            "true or false",
        ),
        ({"kind": "contains", "params": []}, "params", "must be an object"),
        ({"kind": "contains_all", "params": {"values": []}}, "params.values", "non-empty list"),
        (
            {"kind": "contains_all", "params": {"values": ["a", 1]}},
            "params.values[1]",
            "non-empty string",
        ),
        ({"kind": "is_json", "threshold": 1.5}, "threshold", "in [0, 1]"),
        ({"kind": "is_json", "threshold": -0.1}, "threshold", "in [0, 1]"),
        ({"kind": "is_json", "threshold": "high"}, "threshold", "must be a number"),
        ({"kind": "is_json", "weight": 0}, "weight", "greater than 0"),
        ({"kind": "is_json", "weight": math.nan}, "weight", "must be a number"),
        ({"kind": "is_json", "extra": 1}, "extra", "is not accepted"),
        ({"kind": "is_json", "name": ""}, "name", "non-empty string"),
        (
            {"kind": "regex", "params": {"pattern": "(unclosed"}},
            "params.pattern",
            "not a valid regular expression",
        ),
        (
            {"kind": "regex", "params": {"pattern": "a", "timeout_ms": 5000}},
            "params.timeout_ms",
            "at most",
        ),
        (
            {"kind": "json_schema", "params": {"schema": {"type": "strnig"}}},
            "params.schema",
            "not a valid Draft 2020-12 schema",
        ),
        (
            {"kind": "json_schema", "params": {"schema": "object"}},
            "params.schema",
            "an object or a boolean",
        ),
        ({"kind": "char_length", "params": {}}, "params.min", "give min, max or both"),
        (
            {"kind": "char_length", "params": {"min": 5, "max": 2}},
            "params.min",
            "must not exceed max",
        ),
        ({"kind": "latency_ms", "params": {"max": math.inf}}, "params.max", "finite number"),
        ({"kind": "latency_ms", "params": {"max": True}}, "params.max", "must be a number"),
        ({"kind": "pii", "params": {"kinds": ["ssn"]}}, "params.kinds", "accepts only"),
        (
            {"kind": "json_schema", "params": {"schema": {"const": math.nan}}},
            "params",
            "JSON values",
        ),
    ],
)
def test_configuration_errors_name_the_field(raw: Any, field: str, says: str) -> None:
    with pytest.raises(ValidatorConfigError) as caught:
        parse_config(raw)
    assert caught.value.field == field
    assert says in caught.value.message


def test_parse_configs_prefixes_fields_and_refuses_repeated_names() -> None:
    with pytest.raises(ValidatorConfigError) as caught:
        parse_configs([{"kind": "is_json"}, {"kind": "regex", "params": {"pattern": "("}}])
    assert caught.value.field == "validators[1].params.pattern"
    with pytest.raises(ValidatorConfigError) as caught:
        parse_configs([{"kind": "is_json"}, {"kind": "is_json"}])
    assert caught.value.field == "validators[1].name"
    with pytest.raises(ValidatorConfigError):
        parse_configs([])


def test_config_key_is_stable_and_ignores_spelling() -> None:
    plain = parse_config({"kind": "latency_ms", "params": {"max": 2000}})
    spelled = parse_config(
        {
            "kind": "latency_ms",
            "name": "fast",
            "weight": 1,
            "threshold": 1,
            "params": {"max": 2000.0, "min": None},
        }
    )
    assert plain.config_key() == spelled.config_key()
    assert len(plain.config_key()) == 64
    other = parse_config({"kind": "latency_ms", "params": {"max": 2001}})
    assert other.config_key() != plain.config_key()
    heavier = parse_config({"kind": "latency_ms", "params": {"max": 2000}, "weight": 2})
    assert heavier.config_key() != plain.config_key()
