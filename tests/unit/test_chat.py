"""Traced inputs and outputs, in each shape producers record them, read as OpenAI chat rows."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from services.datasets.formats import Format, classify
from services.eval.chat import chat_input, chat_output, input_key

SYSTEM: dict[str, Any] = {"role": "system", "content": "Be brief."}
USER: dict[str, Any] = {"role": "user", "content": "What is RAG?"}
ANSWER: dict[str, Any] = {"role": "assistant", "content": "Retrieval-augmented generation."}
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "search", "arguments": '{"q": "rag"}'},
}
TOOL_TURNS: list[dict[str, Any]] = [
    USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "RAG is ...", "tool_call_id": "call_1"},
]

INPUTS: list[tuple[str, Any, list[dict[str, Any]]]] = [
    ("string", "What is RAG?", [USER]),
    ("openai list", [SYSTEM, USER], [SYSTEM, USER]),
    (
        "openai parts",
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What"}, {"type": "text", "text": "is RAG?"}],
            }
        ],
        [{"role": "user", "content": "What\nis RAG?"}],
    ),
    ("request body", {"model": "m", "temperature": 0, "messages": [SYSTEM, USER]}, [SYSTEM, USER]),
    (
        "anthropic body",
        {"system": "Be brief.", "messages": [USER], "max_tokens": 9},
        [SYSTEM, USER],
    ),
    (
        "responses body",
        {"instructions": "Be brief.", "input": "What is RAG?"},
        [SYSTEM, USER],
    ),
    (
        "anthropic system blocks",
        {"system": [{"type": "text", "text": "Be brief."}], "messages": [USER]},
        [SYSTEM, USER],
    ),
    ("system null", {"system": None, "messages": [USER]}, [USER]),
    ("prompt", {"prompt": "What is RAG?", "k": 3}, [USER]),
    ("input", {"input": "What is RAG?"}, [USER]),
    ("question", {"question": "What is RAG?", "context": ["doc"]}, [USER]),
    ("query", {"query": "What is RAG?"}, [USER]),
    ("input messages", {"input": [USER]}, [USER]),
    ("single message", USER, [USER]),
    (
        "genai",
        [
            {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": "What is RAG?"}]},
        ],
        [SYSTEM, USER],
    ),
    (
        "openinference items",
        [{"message": SYSTEM}, {"message": USER}],
        [SYSTEM, USER],
    ),
    (
        "openinference contents",
        [
            {
                "message": {
                    "role": "user",
                    "contents": [{"message_content": {"type": "text", "text": "What is RAG?"}}],
                }
            }
        ],
        [USER],
    ),
    (
        "openinference flattened",
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "contents.0.message_content.type": "text",
                "contents.0.message_content.text": "What is RAG?",
            },
        ],
        [SYSTEM, USER],
    ),
    (
        "named",
        [{"role": "user", "content": "hi", "name": "ann"}],
        [{"role": "user", "content": "hi", "name": "ann"}],
    ),
    ("openai tool calls", TOOL_TURNS, TOOL_TURNS),
    (
        "genai tool calls",
        [
            {"role": "user", "parts": [{"type": "text", "content": "What is RAG?"}]},
            {
                "role": "assistant",
                "parts": [
                    {
                        "type": "tool_call",
                        "id": "call_1",
                        "name": "search",
                        "arguments": {"q": "rag"},
                    }
                ],
            },
            {
                "role": "tool",
                "parts": [{"type": "tool_call_response", "id": "call_1", "response": "RAG is ..."}],
            },
        ],
        [
            TOOL_TURNS[0],
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**CALL, "function": {"name": "search", "arguments": '{"q": "rag"}'}}
                ],
            },
            TOOL_TURNS[2],
        ],
    ),
    (
        "openinference tool calls",
        [
            {"message": USER},
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "tool_call": {
                                "id": "call_1",
                                "function": {"name": "search", "arguments": '{"q": "rag"}'},
                            }
                        }
                    ],
                }
            },
            {"message": {"role": "tool", "content": "RAG is ...", "tool_call_id": "call_1"}},
        ],
        TOOL_TURNS,
    ),
    (
        "openinference flattened tool calls",
        [
            USER,
            {
                "role": "assistant",
                "tool_calls.0.tool_call.id": "call_1",
                "tool_calls.0.tool_call.function.name": "search",
                "tool_calls.0.tool_call.function.arguments": '{"q": "rag"}',
            },
            {"role": "tool", "content": "RAG is ...", "tool_call_id": "call_1"},
        ],
        TOOL_TURNS,
    ),
    (
        "legacy function call",
        [
            USER,
            {"role": "assistant", "function_call": {"name": "search", "arguments": "{}"}},
            {"role": "function", "name": "search", "content": "RAG is ..."},
        ],
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "search", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "RAG is ...", "name": "search"},
        ],
    ),
]


@pytest.mark.parametrize(
    ("given", "expected"), [(i[1], i[2]) for i in INPUTS], ids=[i[0] for i in INPUTS]
)
def test_input_shapes(given: Any, expected: list[dict[str, Any]]) -> None:
    assert chat_input(given) == expected


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("human", "user"),
        ("ai", "assistant"),
        ("model", "assistant"),
        ("function", "tool"),
        ("developer", "developer"),
        ("User", "user"),
    ],
)
def test_roles_are_mapped(role: str, expected: str) -> None:
    messages = chat_input([{"role": role, "content": "x"}])
    assert messages is not None
    assert messages[0]["role"] == expected


REFUSED_INPUTS: list[tuple[str, Any]] = [
    ("none", None),
    ("number", 3),
    ("bool", True),
    ("empty list", []),
    ("blank string", "  \n "),
    ("all blank", [{"role": "user", "content": " "}]),
    ("empty dict", {}),
    ("no prompt key", {"foo": "bar"}),
    ("unknown role", [{"role": "critic", "content": "x"}]),
    ("role not text", [{"role": 1, "content": "x"}]),
    ("no role", [{"content": "x"}]),
    ("not a message", ["What is RAG?"]),
    ("messages not a list", {"messages": "hi"}),
    ("nested batch", {"messages": [[USER]]}),
    ("content a number", [{"role": "user", "content": 5}]),
    (
        "image part",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            }
        ],
    ),
    ("audio part", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
    ("genai blob", [{"role": "user", "parts": [{"type": "blob", "mime_type": "image/png"}]}]),
    (
        "flattened image",
        [{"role": "user", "contents.0.message_content.type": "image"}],
    ),
    ("part type not text", [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]),
    ("text part without text", [{"role": "user", "content": [{"type": "text"}]}]),
    ("user with tool calls", [{"role": "user", "content": "x", "tool_calls": [CALL]}]),
    (
        "tool call without name",
        [USER, {"role": "assistant", "tool_calls": [{"id": "1", "function": {"arguments": "{}"}}]}],
    ),
    ("tool calls not a list", [USER, {"role": "assistant", "tool_calls": {"id": "1"}}]),
    ("bad flat index", [{"role": "user", "content": "x", "tool_calls.².tool_call.id": "1"}]),
    ("huge flat index", [{"role": "user", "content": "x", "tool_calls." + "9" * 5000 + ".id": 1}]),
    ("system not text", {"system": {"a": 1}, "messages": [USER]}),
    (
        "text beside tool response",
        [
            {
                "role": "tool",
                "parts": [
                    {"type": "text", "content": "note"},
                    {"type": "tool_call_response", "id": "1", "response": "r"},
                ],
            }
        ],
    ),
]


@pytest.mark.parametrize(
    "given", [i[1] for i in REFUSED_INPUTS], ids=[i[0] for i in REFUSED_INPUTS]
)
def test_unusable_inputs_are_refused(given: Any) -> None:
    assert chat_input(given) is None


def test_reasoning_parts_are_left_out() -> None:
    given = [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "thinking..."},
                {"type": "text", "content": "Answer."},
            ],
        }
    ]
    assert chat_input(given) == [{"role": "assistant", "content": "Answer."}]


ANSWER_CALL: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
OUTPUTS: list[tuple[str, Any, dict[str, Any]]] = [
    ("string", "Retrieval-augmented generation.", ANSWER),
    ("message", ANSWER, ANSWER),
    ("message without role", {"content": ANSWER["content"]}, ANSWER),
    (
        "completion",
        {"id": "x", "choices": [{"index": 0, "message": ANSWER, "finish_reason": "stop"}]},
        ANSWER,
    ),
    (
        "completion with refusal null",
        {"choices": [{"message": {**ANSWER, "refusal": None}}]},
        ANSWER,
    ),
    ("legacy completion", {"choices": [{"text": ANSWER["content"]}]}, ANSWER),
    ("message list", [USER, ANSWER], ANSWER),
    (
        "last assistant of several",
        [{"role": "assistant", "content": "first"}, ANSWER, USER],
        ANSWER,
    ),
    ("messages body", {"messages": [USER, ANSWER]}, ANSWER),
    (
        "genai output",
        [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": ANSWER["content"]}],
                "finish_reason": "stop",
            }
        ],
        ANSWER,
    ),
    ("openinference", [{"message": ANSWER}], ANSWER),
    ("openinference single", {"message": ANSWER}, ANSWER),
    ("openai tool call", {"choices": [{"message": ANSWER_CALL}]}, ANSWER_CALL),
    (
        "openai tool call with text",
        {"choices": [{"message": {**ANSWER_CALL, "content": "Searching."}}]},
        {**ANSWER_CALL, "content": "Searching."},
    ),
    (
        "genai tool call",
        [
            {
                "role": "assistant",
                "parts": [
                    {
                        "type": "tool_call",
                        "id": "call_1",
                        "name": "search",
                        "arguments": {"q": "rag"},
                    }
                ],
                "finish_reason": "tool_call",
            }
        ],
        ANSWER_CALL,
    ),
    (
        "openinference flattened tool call",
        [
            {
                "role": "assistant",
                "tool_calls.0.tool_call.id": "call_1",
                "tool_calls.0.tool_call.function.name": "search",
                "tool_calls.0.tool_call.function.arguments": '{"q": "rag"}',
            }
        ],
        ANSWER_CALL,
    ),
    (
        "refusal",
        {"role": "assistant", "content": None, "refusal": "No."},
        {"role": "assistant", "content": "No."},
    ),
]


@pytest.mark.parametrize(
    ("given", "expected"), [(o[1], o[2]) for o in OUTPUTS], ids=[o[0] for o in OUTPUTS]
)
def test_output_shapes(given: Any, expected: dict[str, Any]) -> None:
    assert chat_output(given) == expected


REFUSED_OUTPUTS: list[tuple[str, Any]] = [
    ("none", None),
    ("number", 1.5),
    ("blank", " \n\t"),
    ("blank message", {"role": "assistant", "content": "  "}),
    ("null content", {"role": "assistant", "content": None}),
    ("user message", {"role": "user", "content": "hi"}),
    ("no assistant", [USER, SYSTEM]),
    ("empty list", []),
    ("no choices", {"choices": []}),
    ("choice not an object", {"choices": ["hi"]}),
    ("choice without text", {"choices": [{"text": 3}]}),
    ("image output", {"role": "assistant", "content": [{"type": "image_url"}]}),
    ("tool response", [{"role": "tool", "parts": [{"type": "tool_call_response", "id": "1"}]}]),
    ("unknown dict", {"foo": "bar"}),
]


@pytest.mark.parametrize(
    "given", [o[1] for o in REFUSED_OUTPUTS], ids=[o[0] for o in REFUSED_OUTPUTS]
)
def test_unusable_outputs_are_refused(given: Any) -> None:
    assert chat_output(given) is None


def test_tool_call_round_trip_through_json() -> None:
    """A conversation read once, written as a row and read again, is unchanged."""
    messages = chat_input([*TOOL_TURNS, ANSWER])
    assert messages is not None
    again = chat_input(json.loads(json.dumps({"messages": messages})))
    assert again == messages
    answer = chat_output({"choices": [{"message": ANSWER_CALL}]})
    assert answer is not None
    assert chat_output(json.loads(json.dumps(answer))) == answer
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {"q": "rag"}


@pytest.mark.parametrize(
    ("given", "_expected"), [(i[1], i[2]) for i in INPUTS], ids=[i[0] for i in INPUTS]
)
@pytest.mark.parametrize(
    ("answer", "_answer"), [(o[1], o[2]) for o in OUTPUTS], ids=[o[0] for o in OUTPUTS]
)
def test_rows_are_sft_chat(given: Any, _expected: Any, answer: Any, _answer: Any) -> None:
    messages, reply = chat_input(given), chat_output(answer)
    assert messages is not None
    assert reply is not None
    assert classify({"messages": [*messages, reply]}) is Format.SFT_CHAT
    assert classify({"prompt": messages, "chosen": [reply], "rejected": [reply]}) is (
        Format.DPO_PREFERENCE
    )


def key(value: Any) -> str:
    messages = chat_input(value)
    assert messages is not None
    return input_key(messages)


def test_whitespace_differences_give_the_same_key() -> None:
    tidy = [SYSTEM, USER]
    ragged = [
        {"content": "  Be\tbrief. ", "role": "system"},
        {"role": "user", "content": "What   is\n\nRAG?\n"},
    ]
    assert key(tidy) == key(ragged)
    assert key("What is RAG?") == key({"prompt": "  What is RAG?  "})
    assert len(key(tidy)) == 64
    int(key(tidy), 16)


def test_shapes_of_the_same_prompt_give_the_same_key() -> None:
    assert key([SYSTEM, USER]) == key([{"message": SYSTEM}, {"message": USER}])
    assert key([SYSTEM, USER]) == key(
        [
            {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": "What is RAG?"}]},
        ]
    )


def test_tool_calls_count_in_the_key_but_not_their_ids() -> None:
    base = key(TOOL_TURNS)
    other_id = json.loads(json.dumps(TOOL_TURNS).replace("call_1", "call_9"))
    assert key(other_id) == base
    reordered = json.loads(
        json.dumps(TOOL_TURNS).replace('{\\"q\\": \\"rag\\"}', '{ \\"q\\":\\"rag\\" }')
    )
    assert reordered != TOOL_TURNS
    assert key(reordered) == base
    other_args = json.loads(json.dumps(TOOL_TURNS).replace("rag\\", "llm\\"))
    assert key(other_args) != base
    assert key(TOOL_TURNS[:1]) != base


def test_argument_key_order_does_not_matter() -> None:
    def call(arguments: str) -> list[dict[str, Any]]:
        return [
            USER,
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "f", "arguments": arguments}}],
            },
        ]

    assert key(call('{"a": 1, "b": [2]}')) == key(call('{"b":[2],"a":1}'))
    assert key(call('{"a": 1}')) != key(call('{"a": 2}'))
    assert key(call("not json")) == key(call("not   json"))


def test_different_prompts_give_different_keys() -> None:
    assert key([SYSTEM, USER]) != key([{"role": "system", "content": "Be thorough."}, USER])
    assert key([SYSTEM, USER]) != key([USER])
    assert key([USER]) != key([{"role": "assistant", "content": USER["content"]}])
    assert key([USER, USER]) != key([{"role": "user", "content": "What is RAG? What is RAG?"}])


def test_key_does_not_raise_on_junk() -> None:
    junk: Any = [None, 1, {"role": 2, "content": [1, {"a": None}], "tool_calls": [None, {}]}]
    assert len(input_key(junk)) == 64
    assert len(input_key(None)) == 64  # type: ignore[arg-type]


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "given",
    [
        deep(100_000),
        {"messages": deep(100_000)},
        [{"role": "user", "content": deep(100_000)}],
        [{"message": {"message": deep_dict(100_000)}}],
        [
            USER,
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "f", "arguments": deep(100_000)}}],
            },
        ],
        [
            {
                "role": "tool",
                "parts": [{"type": "tool_call_response", "response": deep_dict(100_000)}],
            }
        ],
        {"choices": [{"message": deep_dict(100_000)}]},
    ],
    ids=["list", "messages", "content", "message", "arguments", "response", "choice"],
)
def test_deep_nesting_does_not_raise(given: Any) -> None:
    assert chat_input(given) is None
    assert chat_output(given) is None


def test_deep_json_arguments_still_key() -> None:
    nested = "[" * 100_000 + "]" * 100_000
    messages = chat_input(
        [
            USER,
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": nested}}]},
        ]
    )
    assert messages is not None
    assert len(input_key(messages)) == 64


def test_large_input_is_linear() -> None:
    """Ten times the messages takes about ten times as long, not a hundred."""

    def timed(n: int) -> float:
        value = [{"role": "user", "content": [{"type": "text", "text": "a b "}] * 4}] * n
        start = time.perf_counter()
        messages = chat_input(value)
        assert messages is not None
        input_key(messages)
        chat_output([*value, ANSWER])
        return time.perf_counter() - start

    timed(1000)
    assert timed(200_000) < 40 * max(timed(20_000), 1e-3)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    words = [
        "role",
        "content",
        "parts",
        "type",
        "text",
        "message",
        "messages",
        "choices",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "user",
        "assistant",
        "tool",
        "tool_call",
        "tool_call_response",
        "id",
        "response",
        "system",
        "contents.0.type",
    ]
    pick = rng.randrange(9 if depth < 5 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([0, -1, 1.5, True, False, float("inf")])
    if pick in (2, 3, 4):
        return rng.choice([*words, "", " ", "\ud800"])
    if pick in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(words): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_random_json_never_raises() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        value = random_json(rng)
        messages = chat_input(value)
        answer = chat_output(value)
        if messages is not None:
            input_key(messages)
            if answer is not None:
                assert classify({"messages": [*messages, answer]}) is Format.SFT_CHAT
