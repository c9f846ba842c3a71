"""Schemathesis hooks for the API fuzz test (loaded through SCHEMATHESIS_HOOKS).

The eval routes take bodies the schema can only sketch (a validator's `params` is any JSON
object; a judgment needs a trace that exists): bodies drawn from the schema alone are all
refused with 400 before anything is judged or stored. Beside them, these hooks draw bodies of
the right shape, with the values inside still fuzzed, so that judgments, rules and keys are
made and the routes behind them are reached too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import schemathesis
from hypothesis import strategies as st

# The pod's output upload (a .tar.gz) is sent as the raw bytes generated for it.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")

# The traces test_fuzz.seed stores for the fuzzer: chat spans, and a RAG call.
CHAT_TRACE = "fuzz-trace"
RAG_TRACE = "fuzz-rag"
TRACES = st.sampled_from([CHAT_TRACE, RAG_TRACE])
SPANS = st.sampled_from(["span-0", "span-2", "root", "retrieve", "llm", "nope"])

TEXT = st.text(max_size=40)
WORDS = st.text(min_size=1, max_size=40).filter(str.strip)
FRACTION = st.floats(0, 1)
BOUND = st.floats(0, 1e7)
KEY_NAME = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
API_KEY = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=80)


def _params(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"kind": st.just(kind), "params": st.fixed_dictionaries(fields)})


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


_VALUE_KINDS = ("equals", "contains", "not_contains", "starts_with", "ends_with")
_BOUND_KINDS: tuple[str, ...] = ("char_length", "token_length", "latency_ms", "ttft_ms")
_BOUND_KINDS += ("cost_usd", "input_tokens", "output_tokens")
_PATTERNS = (r"\d{4}", r"^sure$", r"(a|b)*c", r"[A-Z]\w+", r"(x+x+)+y", "", ".")
_SCHEMAS: tuple[dict[str, Any], ...] = (
    {"type": "object"},
    {"type": "array", "items": {"type": "number"}},
    {},
)

_CHECK = st.one_of(
    st.sampled_from(_VALUE_KINDS).flatmap(
        lambda kind: _params(kind, value=WORDS, case_sensitive=st.booleans())
    ),
    st.sampled_from(("contains_all", "contains_any")).flatmap(
        lambda kind: _params(kind, values=st.lists(WORDS, min_size=1, max_size=3))
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("regex"),
            "params": st.fixed_dictionaries(
                {"pattern": st.sampled_from(_PATTERNS)},
                optional={
                    "full_match": st.booleans(),
                    "multiline": st.booleans(),
                    "case_sensitive": st.booleans(),
                    "timeout_ms": st.integers(1, 1000),
                },
            ),
        }
    ),
    _params("json_schema", schema=st.sampled_from(_SCHEMAS)),
    st.sampled_from(_BOUND_KINDS).flatmap(lambda kind: _params(kind, min=BOUND, max=BOUND)),
    st.sampled_from(_BOUND_KINDS).flatmap(lambda kind: _params(kind, max=BOUND)),
    st.sampled_from(("levenshtein", "rouge_l")).flatmap(lambda kind: _params(kind, reference=TEXT)),
    _params("refusal", expect_refusal=st.booleans()),
    _params(
        "pii", kinds=st.lists(st.sampled_from(["email", "phone", "card"]), min_size=1, unique=True)
    ),
    st.fixed_dictionaries({"kind": st.sampled_from(("is_json", "pii", "refusal"))}),
)
VALIDATOR = st.tuples(
    _CHECK,
    _optional(name=WORDS, weight=st.floats(0.01, 100), threshold=FRACTION),
).map(lambda pair: {**pair[0], **pair[1]})
VALIDATORS = st.lists(
    VALIDATOR, min_size=1, max_size=4, unique_by=lambda v: v.get("name", v["kind"])
)
GROUNDEDNESS = st.fixed_dictionaries(
    {"method": st.just("offline")},
    optional={"threshold": FRACTION, "weight": st.floats(0.01, 100)},
)


# Shapes by (method, path): each a strategy for the body or the path parameters.
WHERE = _optional(
    model=st.sampled_from(["gpt-4o", "claude-3-5-haiku", ""]),
    kind=st.sampled_from(["llm", "chain", "retrieval", "unspecified"]),
    roots_only=st.booleans(),
    trace_id=TRACES,
    tags=st.lists(WORDS, max_size=2),
    session_id=st.sampled_from(["s1", ""]),
)
BODIES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("POST", "/v1/evaluations"): st.fixed_dictionaries(
        {"trace_id": TRACES, "validators": VALIDATORS},
        optional={
            "span_id": SPANS,
            "groundedness": GROUNDEDNESS,
            "reference": TEXT,
            "rerun": st.booleans(),
        },
    ),
    ("POST", "/v1/eval-rules"): st.fixed_dictionaries(
        {"name": WORDS, "validators": VALIDATORS},
        optional={
            "sampling_rate": st.floats(0, 1, exclude_min=True),
            "groundedness": GROUNDEDNESS,
            "filter": WHERE,
        },
    ),
    ("PUT", "/v1/judge-keys/{name}"): st.fixed_dictionaries({"api_key": API_KEY}),
}
PATH_PARAMETERS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    (method, "/v1/judge-keys/{name}"): st.fixed_dictionaries({"name": KEY_NAME})
    for method in ("PUT", "DELETE")
}
Strategy = st.SearchStrategy[Any]
Hook = TypeVar("Hook", bound=Callable[[schemathesis.HookContext, Strategy], Strategy])


def _hook(function: Hook) -> Hook:
    """schemathesis.hook, typed: registers `function` under its name."""
    schemathesis.hook(function)
    return function


def _either(
    shapes: dict[tuple[str, str], Strategy], context: schemathesis.HookContext, strategy: Strategy
) -> Strategy:
    """Values of the shape the route accepts (where there is one; first, as the simpler
    choice, so that a short run has them too), or the schema's own."""
    operation = context.operation
    if operation is None:
        return strategy
    shaped = shapes.get((operation.method.upper(), operation.path))
    return strategy if shaped is None else st.one_of(shaped, strategy)


@_hook
def before_generate_body(context: schemathesis.HookContext, strategy: Strategy) -> Strategy:
    return _either(BODIES, context, strategy)


@_hook
def before_generate_path_parameters(
    context: schemathesis.HookContext, strategy: Strategy
) -> Strategy:
    return _either(PATH_PARAMETERS, context, strategy)
