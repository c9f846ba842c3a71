"""Traced LLM calls as OpenAI chat messages, the shape fine-tuning rows are built from.

A span keeps its input and output exactly as the producer sent them: a plain string, OpenAI chat
messages or a request body, OpenTelemetry GenAI messages with `parts`, OpenInference's
`{"message": {...}}` items or its flattened attributes, a completion's `choices`. SFT and DPO
rows need one shape, so each is read into OpenAI chat messages here. What cannot be read
faithfully (an unknown role, image or audio content, a tool call without a name) gives None
rather than a guess: a row missing part of its prompt teaches the wrong thing, and the caller
counts such spans as unusable.

The values come from outside, so nothing here recurses into them: each message is read to a
fixed depth, which keeps the work linear and lets no nesting raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import orjson

Message = dict[str, Any]

_ROLES = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}
_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
# Hidden reasoning has no place in a chat row; the answer around it does.
_SKIPPED_PARTS = frozenset({"reasoning", "thinking"})
_PROMPT_KEYS = ("prompt", "input", "question", "query")
# Top-level system prompts of Anthropic's and OpenAI Responses' request bodies: dropping them
# would train on a different prompt than the model saw.
_SYSTEM_KEYS = ("system", "instructions")
# OpenInference flattens a message's lists into keys like "tool_calls.0.tool_call.function.name".
_FLAT_LISTS = {"tool_calls": "tool_call.", "contents": "message_content."}
_MAX_INDEX_DIGITS = 9


def chat_input(value: Any) -> list[Message] | None:
    """The conversation that went into the model, as OpenAI chat messages; None when any of it
    cannot be read as text messages, or when it says nothing."""
    conversation: list[Message] | None = None
    if isinstance(value, str):
        conversation = [{"role": "user", "content": value}]
    elif isinstance(value, list):
        conversation = _conversation(value)
    elif isinstance(value, dict):
        conversation = _body(value)
    if not conversation or not any(_says_something(m) for m in conversation):
        return None
    return conversation


def chat_output(value: Any) -> Message | None:
    """The model's answer as one assistant message; None when there is none, or it is blank
    and calls no tool."""
    message = _answer(value)
    if message is None or message["role"] != "assistant" or not _says_something(message):
        return None
    return message


def input_key(messages: list[Message]) -> str:
    """Hex SHA-256 of the conversation normalised: whitespace collapsed, key order and tool call
    ids ignored (ids are opaque tokens that differ between runs of the same prompt)."""
    canonical = [_canonical(m) for m in messages] if isinstance(messages, list) else []
    try:
        blob = orjson.dumps(canonical)
    except TypeError:  # a lone surrogate, which no stored span holds (protobuf is UTF-8)
        blob = json.dumps(canonical, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _body(value: dict[str, Any]) -> list[Message] | None:
    if "messages" in value:
        conversation = _conversation(value["messages"])
    elif "role" in value or isinstance(value.get("message"), dict):
        conversation = _conversation([value])
    else:
        conversation = None
        for key in _PROMPT_KEYS:
            prompt = value.get(key)
            if isinstance(prompt, str):
                conversation = [{"role": "user", "content": prompt}]
                break
            if isinstance(prompt, list):
                conversation = _conversation(prompt)
                break
    if conversation is None:
        return None
    for key in _SYSTEM_KEYS:
        if value.get(key) is not None:
            system = _system_text(value[key])
            if system is None:
                return None
            conversation.insert(0, {"role": "system", "content": system})
            break
    return conversation


def _system_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    responses: list[Message] = []
    if isinstance(value, list) and _read_parts(value, texts, calls, responses):
        return None if calls or responses else "\n".join(texts)
    return None


def _conversation(items: Any) -> list[Message] | None:
    if not isinstance(items, list):
        return None
    conversation: list[Message] = []
    for item in items:
        messages = _messages_of(item)
        if messages is None:
            return None
        conversation.extend(messages)
    return conversation


def _answer(value: Any) -> Message | None:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list):
        return _last_assistant(value)
    if not isinstance(value, dict):
        return None
    choices = value.get("choices")
    if isinstance(choices, list):
        choice = choices[0] if choices else None
        if not isinstance(choice, dict):
            return None
        if isinstance(choice.get("message"), dict):
            return _one(choice["message"])
        text = choice.get("text")
        return {"role": "assistant", "content": text} if isinstance(text, str) else None
    if isinstance(value.get("messages"), list):
        return _last_assistant(value["messages"])
    return _one(value)


def _last_assistant(items: list[Any]) -> Message | None:
    for item in reversed(items):
        if isinstance(item, dict) and _role(_unwrap(item), "") == "assistant":
            return _one(item)
    return None


def _one(item: dict[str, Any]) -> Message | None:
    """An output message; the role may be left out, since an output is the model's."""
    messages = _messages_of(item, default_role="assistant")
    return messages[0] if messages is not None and len(messages) == 1 else None


def _unwrap(item: dict[str, Any]) -> dict[str, Any]:
    message = item.get("message")
    return message if isinstance(message, dict) else item


def _role(item: dict[str, Any], default_role: str) -> str | None:
    raw = item.get("role", default_role)
    return _ROLES.get(raw.lower()) if isinstance(raw, str) else None


def _messages_of(item: Any, default_role: str = "") -> list[Message] | None:
    """One recorded message as OpenAI messages: one, except that a GenAI message carrying tool
    responses becomes one tool message per response."""
    if not isinstance(item, dict):
        return None
    item = _unwrap(item)
    role = _role(item, default_role)
    if role is None:
        return None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    responses: list[Message] = []
    flat = _flat_lists(item)
    if flat is None:
        return None
    content = item.get("content")
    for source in (content, item.get("parts"), item.get("contents"), flat["contents"]):
        if source is None:
            continue
        if isinstance(source, str):
            texts.append(source)
        elif not (isinstance(source, list) and _read_parts(source, texts, calls, responses)):
            return None
        break
    if content is None and isinstance(item.get("refusal"), str):
        texts.append(item["refusal"])
    if not _read_calls(item, flat["tool_calls"], calls):
        return None
    if responses:
        # Tool responses travel alone in their own message; text beside them has no home.
        return responses if role in ("tool", "user") and not texts and not calls else None
    if calls and role != "assistant":
        return None
    text = "\n".join(texts)
    message: Message = {"role": role, "content": None if calls and not text.strip() else text}
    name = item.get("name")
    if isinstance(name, str) and name:
        message["name"] = name
    if calls:
        message["tool_calls"] = calls
    call_id = item.get("tool_call_id")
    if isinstance(call_id, str) and call_id:
        message["tool_call_id"] = call_id
    return [message]


def _read_parts(
    parts: list[Any], texts: list[str], calls: list[dict[str, Any]], responses: list[Message]
) -> bool:
    """Content parts into texts, tool calls and tool responses; False on any part that is not
    text (image, audio, file) or is malformed."""
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            return False
        if isinstance(part.get("message_content"), dict):
            part = part["message_content"]
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            return False
        if kind in _TEXT_PARTS:
            text = next(
                (part[k] for k in ("text", "content", "refusal") if isinstance(part.get(k), str)),
                None,
            )
            if text is None:
                return False
            texts.append(text)
        elif kind == "tool_call":
            call = _call(part.get("id"), part.get("name"), part.get("arguments"))
            if call is None:
                return False
            calls.append(call)
        elif kind == "tool_call_response":
            response = part.get("response")
            answer = response if isinstance(response, str) else _json_text(response)
            if answer is None:
                return False
            tool: Message = {"role": "tool", "content": answer}
            if isinstance(part.get("id"), str) and part["id"]:
                tool["tool_call_id"] = part["id"]
            responses.append(tool)
        elif kind not in _SKIPPED_PARTS:
            return False
    return True


def _read_calls(
    item: dict[str, Any], flat: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> bool:
    listed = item.get("tool_calls")
    if listed is not None and not isinstance(listed, list):
        return False
    for raw in [*(listed or ()), *flat]:
        call = _listed_call(raw)
        if call is None:
            return False
        calls.append(call)
    # The deprecated single function call, and OpenInference's flattened form of it.
    legacy = item.get("function_call")
    if isinstance(legacy, dict):
        call = _call(None, legacy.get("name"), legacy.get("arguments"))
    elif legacy is not None:
        return False
    elif "function_call_name" in item:
        call = _call(None, item["function_call_name"], item.get("function_call_arguments_json"))
    else:
        return True
    if call is None:
        return False
    calls.append(call)
    return True


def _listed_call(raw: Any) -> dict[str, Any] | None:
    """A tool call in OpenAI's shape, OpenInference's `{"tool_call": {...}}`, or flat (name and
    arguments beside the id, as flattened attributes give them)."""
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("tool_call"), dict):
        raw = raw["tool_call"]
    function = raw.get("function")
    if isinstance(function, dict):
        return _call(raw.get("id"), function.get("name"), function.get("arguments"))
    return _call(
        raw.get("id"),
        raw.get("function.name", raw.get("name")),
        raw.get("function.arguments", raw.get("arguments")),
    )


def _call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name:
        return None
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        arguments = _json_text(arguments)
        if arguments is None:
            return None
    call: dict[str, Any] = {}
    # No id is made up where the producer recorded none.
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    call["type"] = "function"
    call["function"] = {"name": name, "arguments": arguments}
    return call


def _flat_lists(item: dict[str, Any]) -> dict[str, list[dict[str, Any]]] | None:
    """OpenInference's flattened lists in one message, as lists of dicts in index order; None
    when an index is not a plain number."""
    found: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in _FLAT_LISTS}
    for key, value in item.items():
        if not isinstance(key, str):
            continue
        head, dot, rest = key.partition(".")
        if not dot or head not in _FLAT_LISTS:
            continue
        index, dot, field = rest.partition(".")
        if not (dot and index.isascii() and index.isdigit() and len(index) <= _MAX_INDEX_DIGITS):
            return None
        entry = found[head].setdefault(int(index), {})
        entry[field.removeprefix(_FLAT_LISTS[head])] = value
    return {name: [entries[i] for i in sorted(entries)] for name, entries in found.items()}


def _json_text(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _says_something(message: Message) -> bool:
    content = message.get("content")
    return bool(message.get("tool_calls")) or (isinstance(content, str) and bool(content.strip()))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _field(mapping: Any, key: str) -> str:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if value is None:
        return ""
    if isinstance(value, str):
        return _collapse(value)
    return _collapse(_json_text(value) or "")


def _canonical(message: Any) -> list[Any]:
    if not isinstance(message, dict):
        return []
    calls = message.get("tool_calls")
    return [
        _field(message, "role"),
        _field(message, "content"),
        _field(message, "name"),
        [_canonical_call(c) for c in calls] if isinstance(calls, list) else [],
    ]


def _canonical_call(call: Any) -> list[str]:
    """Name and arguments; JSON arguments with their keys sorted, so key order is no difference."""
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(arguments, str):
        return [_field(function, "name"), _field(function, "arguments")]
    # Arguments that are not JSON (or nest beyond what json reads) are compared as text.
    with contextlib.suppress(ValueError, RecursionError):
        arguments = json.dumps(
            json.loads(arguments), ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )
    return [_field(function, "name"), _collapse(arguments)]
