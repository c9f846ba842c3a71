"""The scrub pass leaves no credential and no personal data in a curated chat row, keeps what
only looks like personal data, counts what it masked, and never touches its input."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from services.common.sanitize import MASK
from services.eval import pii
from services.eval.scrub import MASKS, scrub_messages, scrub_text
from tests.unit.test_sanitize import OPAQUE, PEM, SHAPED, _gone

EMAIL = "jane.doe+tag@mail.example.org"
PHONE = "+1 415-555-0134"
CARD = "4111 1111 1111 1111"
IPV4 = "203.0.113.7"
IPV6 = "2001:db8:85a3::8a2e:370:7334"
SSN = "123-45-6789"

PLANTED = [
    (EMAIL, "email"),
    ("bob@example.com", "email"),
    (PHONE, "phone"),
    ("(415) 555-0134", "phone"),
    ("+447911123456", "phone"),
    ("020 7946 0958", "phone"),
    (CARD, "card"),
    ("4242-4242-4242-4242", "card"),
    ("4111111111111111", "card"),
    (IPV4, "ip"),
    ("10.0.0.1", "ip"),
    ("192.168.100.200", "ip"),  # also shaped like a phone number: the IP wins
    ("1.2.3.4", "ip"),  # a four-part version cannot be told from an address: masked
    (IPV6, "ip"),
    ("fe80::1", "ip"),
    ("2001:db8::10.0.0.1", "ip"),
    (SSN, "ssn"),
    ("900-70-1234", "ssn"),  # an ITIN: personal too
]


def _message(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def _call(arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "lookup", "arguments": arguments},
    }


def _arguments(messages: list[dict[str, Any]]) -> str:
    arguments = messages[0]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str)
    return arguments


# --- each kind, wherever it is --------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), PLANTED)
def test_each_kind_is_masked_in_text(value: str, kind: str) -> None:
    text, counts = scrub_text(f"reach me: {value}, thanks")
    assert text == f"reach me: {MASKS[kind]}, thanks"
    assert counts == {kind: 1}


@pytest.mark.parametrize(("value", "kind"), PLANTED)
def test_each_kind_is_masked_in_content_and_text_parts(value: str, kind: str) -> None:
    messages = [
        {"role": "system", "content": f"The user is {value}."},
        _message(
            [
                {"type": "text", "text": f"it is {value}"},
                {"type": "text", "text": "nothing here"},
            ]
        ),
        {"role": "assistant", "content": None, "refusal": f"I won't share {value}"},
    ]
    out, counts = scrub_messages(messages)
    assert out == [
        {"role": "system", "content": f"The user is {MASKS[kind]}."},
        _message(
            [
                {"type": "text", "text": f"it is {MASKS[kind]}"},
                {"type": "text", "text": "nothing here"},
            ]
        ),
        {"role": "assistant", "content": None, "refusal": f"I won't share {MASKS[kind]}"},
    ]
    assert counts == {kind: 3}


@pytest.mark.parametrize(("value", "kind"), PLANTED)
def test_each_kind_is_masked_in_tool_call_arguments(value: str, kind: str) -> None:
    as_json = json.dumps({"query": f"who is {value}", "limit": 3}, separators=(",", ":"))
    as_text = f"lookup --who {value}"
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [_call(as_json), _call(as_text)]},
        {"role": "assistant", "function_call": {"name": "lookup", "arguments": as_json}},
    ]
    out, counts = scrub_messages(messages)
    masked = MASKS[kind]
    # JSON stays JSON, in the same compact form; text stays text.
    assert out[0]["tool_calls"][0]["function"]["arguments"] == (
        f'{{"query":"who is {masked}","limit":3}}'
    )
    assert out[0]["tool_calls"][1]["function"]["arguments"] == f"lookup --who {masked}"
    assert json.loads(out[1]["function_call"]["arguments"]) == {
        "query": f"who is {masked}",
        "limit": 3,
    }
    assert counts == {kind: 3}


def test_arguments_keep_their_form() -> None:
    spaced = '{"to": "bob@example.com", "cc": ["ann@example.com"], "note": "café"}'
    out, _ = scrub_messages([{"role": "assistant", "tool_calls": [_call(spaced)]}])
    assert _arguments(out) == '{"to": "[EMAIL]", "cc": ["[EMAIL]"], "note": "café"}'
    # Nothing to mask: the very same string, whatever its spacing or escapes.
    untouched = '{ "city" :"Paris",\n "unit": "\\u00b0C" }'
    out, counts = scrub_messages([{"role": "assistant", "tool_calls": [_call(untouched)]}])
    assert _arguments(out) == untouched
    assert not counts


def test_json_keys_and_numbers_are_scrubbed_too() -> None:
    arguments = json.dumps({"bob@example.com": {"card": 4111111111111111, "count": 12}})
    out, counts = scrub_messages([{"role": "assistant", "tool_calls": [_call(arguments)]}])
    assert json.loads(_arguments(out)) == {"[EMAIL]": {"card": "[CARD]", "count": 12}}
    assert counts == {"email": 1, "card": 1}


def test_arguments_that_are_not_json_objects() -> None:
    for arguments, expected in [
        ('"mail bob@example.com"', '"mail [EMAIL]"'),
        ("[1, 2", "[1, 2"),  # broken JSON, nothing to mask: as it was
        ('{"to": "bob@example.com"', '{"to": "[EMAIL]"'),  # broken JSON, scrubbed as text
        ("[" * 100_000 + "bob@example.com", "[" * 100_000 + "[EMAIL]"),  # too deep to parse
    ]:
        out, _ = scrub_messages([{"role": "assistant", "tool_calls": [_call(arguments)]}])
        assert _arguments(out) == expected


# --- credentials, planted as the tracing tests plant them ----------------------------------


@pytest.mark.parametrize("secret", [*SHAPED, PEM])
def test_shaped_credentials_are_masked_everywhere(secret: str) -> None:
    messages = [
        _message(f"my key is {secret} ok"),
        _message([{"type": "text", "text": f"use {secret}"}]),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                _call(json.dumps({"note": f"with {secret}", "nested": [{"x": secret}]})),
                _call(f"deploy --token-file x {secret}"),
            ],
        },
    ]
    out, counts = scrub_messages(messages)
    dumped = json.dumps(out)
    _gone(secret, dumped)
    _gone(secret, json.dumps(out, ensure_ascii=False).replace("\\n", "\n"))
    assert counts["credential"] == 5


def test_opaque_credentials_are_masked_by_name() -> None:
    arguments = json.dumps({"api_key": OPAQUE, "login": {"password": 1234, "user": "ann"}})
    messages = [
        _message(f"curl -H 'Authorization: Bearer {OPAQUE}' 'https://h/x?key={OPAQUE}'"),
        _message(f"connect with password={OPAQUE} to postgres://ann:{OPAQUE}@db.internal/x"),
        {"role": "assistant", "tool_calls": [_call(arguments), _call(f"--api-key={OPAQUE}")]},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"https://h/i.png?sig={OPAQUE}"}}
            ],
        },
    ]
    out, counts = scrub_messages(messages)
    _gone(OPAQUE, json.dumps(out))
    login = {"password": MASK, "user": "ann"}
    assert json.loads(_arguments(out[2:])) == {"api_key": MASK, "login": login}
    assert out[3]["content"][0]["image_url"]["url"] == f"https://h/i.png?sig={MASK}"
    assert counts["credential"] >= 7
    assert set(counts) == {"credential"}


def test_already_masked_text_is_not_counted_again() -> None:
    text = f"key sk-proj-{MASK}, password={MASK}, mail [EMAIL]"
    assert scrub_text(text) == (text, {})
    once, _ = scrub_text(f"{SHAPED[0]} {EMAIL} {PHONE} {CARD} {IPV4} {IPV6} {SSN}")
    assert scrub_text(once) == (once, {})


# --- look-alikes kept ---------------------------------------------------------------------

KEPT = [
    "at 2024-01-15 10:30 the build ran",  # a date and time
    "the years 1999 2000 2001 2002 were dry",  # four-digit groups alone
    "order ORD123456789012 shipped",  # digits inside a word
    "order 123456789012 shipped",  # a bare run of digits: an id, not a phone
    "trace 1700000000123 at ts 1700000000",
    "card 4111 1111 1111 1112",  # fails the Luhn check
    "version 1.2.3 and v1.2.3.4 and 1.2.3.4.5 and 10.0.0.256",
    "bind 0.0.0.0:8080, curl 127.0.0.1, mask 255.255.255.0, multicast 224.0.0.1",
    "listen [::]:80 and [::1]:80, mapped ::ffff:0:0",
    "at 12:30:45 std::vector<int> a::b::c mac 00:1a:2b:3c:4d:5e",
    "placeholders 000-12-3456 123-00-4567 123-45-0000, part no. 123-45-67890, id A123-45-6789",
    "user@localhost and @handle and a@b",
    "pi is 3.14159265358979, e is 2.718281828459045",
    "Key: C major; the max_tokens is 4096; session_id abc",
]


@pytest.mark.parametrize("text", KEPT)
def test_look_alikes_are_kept(text: str) -> None:
    assert scrub_text(text) == (text, {})


# --- counts, input, what is not text ----------------------------------------------------------


def test_counts_by_kind() -> None:
    text = f"{EMAIL}, bob@example.com; {PHONE}; {CARD}; {IPV4} {IPV6}; {SSN}; {SHAPED[0]}"
    scrubbed, counts = scrub_text(text)
    assert counts == {"email": 2, "phone": 1, "card": 1, "ip": 2, "ssn": 1, "credential": 1}
    assert scrubbed.count("[EMAIL]") == 2
    _, total = scrub_messages([_message(text), _message([{"type": "text", "text": text}])])
    assert total == {kind: 2 * count for kind, count in counts.items()}


def test_adjacent_values_are_masked_each() -> None:
    text, counts = scrub_text(f"SSNs {SSN} 987-65-4321, mails a@x.io,b@y.io")
    assert text == "SSNs [SSN] [SSN], mails [EMAIL],[EMAIL]"
    assert counts == {"ssn": 2, "email": 2}


def test_roles_ids_and_names_are_kept_and_the_input_is_untouched() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "name": "bob@example.com", "content": f"call {PHONE}"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": EMAIL}, {"type": "refusal", "refusal": SSN}],
            "tool_calls": [_call(json.dumps({"to": EMAIL}), call_id=IPV4)],
            "x-extra": {"list": [EMAIL]},
        },
        {"role": "tool", "tool_call_id": IPV4, "name": SSN, "content": f"sent to {EMAIL}"},
    ]
    before = copy.deepcopy(messages)
    out, counts = scrub_messages(messages)
    assert messages == before
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
    assert out[0]["name"] == "bob@example.com"
    assert out[1]["tool_calls"][0]["id"] == IPV4
    assert out[1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert out[1]["content"] == [
        {"type": "text", "text": "[EMAIL]"},
        {"type": "refusal", "refusal": "[SSN]"},
    ]
    assert out[1]["x-extra"] == {"list": [EMAIL]}  # not a field of a chat message's text
    assert out[2] == {
        "role": "tool",
        "tool_call_id": IPV4,
        "name": SSN,
        "content": "sent to [EMAIL]",
    }
    assert counts == {"phone": 1, "email": 3, "ssn": 1}
    # The output shares nothing with the input.
    out[1]["x-extra"]["list"].append("x")
    out[1]["tool_calls"][0]["function"]["name"] = "x"
    assert messages == before


def test_other_parts_and_empty_content() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [_message(None), _message([]), _message([image, "a part as a string: a@x.io"])]
    out, counts = scrub_messages(messages)
    assert out == [_message(None), _message([]), _message([image, "a part as a string: [EMAIL]"])]
    assert out[2]["content"][0] is not image
    assert counts == {"email": 1}


# --- the finders ---------------------------------------------------------------------------


def test_finders_yield_spans() -> None:
    text = f"a {EMAIL} b {PHONE} c {CARD} d {IPV4} e {SSN} f {IPV6}."
    assert [text[s:e] for s, e in pii.emails(text)] == [EMAIL]
    assert [text[s:e] for s, e in pii.phones(text)] == [PHONE]
    assert [text[s:e] for s, e in pii.cards(text)] == [CARD]
    assert [text[s:e] for s, e in pii.ssns(text)] == [SSN]
    assert [text[s:e] for s, e in pii.ips(text)] == [IPV4, IPV6]
    assert list(pii.ips("at fe80::1%eth0: 2001:db8::10.0.0.1.")) == [(3, 10), (17, 35)]


# --- hostile input -------------------------------------------------------------------------

MB = 1_000_000
HOSTILE = {
    "digits": "7" * MB,
    "at signs": "@" * MB,
    "a@ runs": "a@" * (MB // 2),
    "long local part": "a" * MB + "@x.io",
    "long domain": "a@" + "a." * (MB // 2),
    "dots and digits": "1." * (MB // 2),
    "colons": ":" * MB,
    "hex and colons": "a:" * (MB // 2),
    "dashes and digits": "1-" * (MB // 2),
    "spaced digits": "1 " * (MB // 2),
    "parentheses": "(" * MB,
    "plus and digits": "+1" * (MB // 2),
    "addresses": "1.1.1.1 2001:db8::1 " * (MB // 20),
    "bad addresses": "2000::1::1 " * (MB // 11),
    "numbers": f"{PHONE} {CARD} {SSN} " * (MB // 40),
    "emails": "bo@ex.com " * (MB // 10),
    "key pairs": "key=" * (MB // 4),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_scrubbed_in_linear_time(text: str) -> None:
    # A smoke check with a generous bound: a backtracking pattern takes minutes on this.
    started = time.perf_counter()
    scrub_text(text)
    scrub_messages([{"role": "assistant", "tool_calls": [_call(json.dumps({"q": text}))]}])
    assert time.perf_counter() - started < 10.0
