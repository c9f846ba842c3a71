"""A span as the JSON that is stored: proto JSON (proto field names), every credential masked.

One walk over the message does both the conversion and the masking. It gives what
`json_format.MessageToDict` followed by `sanitize.sanitize_value` over the result would give,
at a fraction of the cost: ingest runs it for every span, and those two generic walks were most
of a span's cost. What the walk knows from the schema, it skips: the service's own timestamps,
numbers and enum names hold no credential, so only texts and the free-form values (input,
output, metadata) are examined. Headers, URLs and scores get their own rules, as before.

`parse_stored` is the way back, for lists, traces and merges: `json_format.Parse`'s result, by
a walk that knows the schema instead of a generic one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.remembered import Remembered
from services.common.sanitize import (
    MASK,
    MAX_DEPTH,
    TRUNCATED,
    sanitize_headers,
    sanitize_text,
    sanitize_url,
    sanitize_value,
    sensitive_name,
)
from tunelab.tracing.v1 import spans_pb2 as pb


class NotFinite(ValueError):
    """A number in a free-form value is NaN or infinite: JSON cannot hold it."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} holds a number that is NaN or infinite; JSON numbers are finite")
        self.field = field


def stored_json(span: pb.Span) -> dict[str, Any]:
    """The span as stored: a JSON-ready dict. Raises NotFinite for a NaN or an infinity in its
    input, output or metadata (a proto double elsewhere is checked before)."""
    return _message(span, 0, "")


Convert = Callable[[Any, int, str], Any]


def _as_is(value: Any, _: int, __: str) -> Any:
    return value


def _text(text: str, _: int, __: str) -> str:
    return sanitize_text(text)


def _message(message: Message, depth: int, path: str) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    converters = _CONVERTERS.get(descriptor.full_name) or _converters(descriptor)
    out: dict[str, Any] = {}
    nested = depth + 1
    for field, value in message.ListFields():
        name = field.name
        convert = converters[name]
        # The two commonest cases without a call: this runs for every field of every span.
        if convert is _text:
            out[name] = sanitize_text(value)
        elif convert is _as_is:
            out[name] = value
        else:
            out[name] = convert(value, nested, name)
    return out


_CONVERTERS: dict[str, dict[str, Convert]] = {}


def _converters(descriptor: Any) -> dict[str, Convert]:
    found = {field.name: _converter(field) for field in descriptor.fields}
    _CONVERTERS[descriptor.full_name] = found
    return found


# Ids are checked to be plain (no credential shape) before a span gets here.
_IDS = {"trace_id", "span_id", "parent_span_id"}
_URLS = {"base_url", "api_endpoint"}


def _converter(field: FieldDescriptor) -> Convert:
    one = _single(field)
    if field.is_repeated and not _is_map(field):
        return lambda values, depth, path: [one(v, depth + 1, path) for v in values]
    return one


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _single(field: FieldDescriptor) -> Convert:
    if _is_map(field):
        if field.full_name == "tunelab.tracing.v1.RequestMetadata.headers":
            return lambda headers, depth, _: sanitize_value(sanitize_headers(headers), depth=depth)
        if field.full_name == "tunelab.tracing.v1.Evaluation.scores":
            # A map of numbers: a credential-like name drops its entry (a masked value would be
            # a string where a number must be).
            return lambda scores, _, __: {
                k: v for k, v in scores.items() if not sensitive_name(k) and sanitize_text(k) == k
            }
        raise TypeError(f"no stored form for the map {field.full_name}")
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return _timestamp
        if name == "google.protobuf.Value":
            return _value
        if name == "google.protobuf.Struct":
            return _struct
        return _message
    if field.enum_type is not None:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number, _, __: names.get(number, number)
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if field.name in _IDS:
            return _as_is
        if field.name in _URLS:
            return lambda url, _, __: sanitize_text(sanitize_url(url))
        return _text
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
        return lambda number, _, __: str(number)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _double
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_BOOL):
        return _as_is
    raise TypeError(f"no stored form for {field.full_name} (type {kind})")


_EPOCH = datetime(1970, 1, 1)


def _iso_second(seconds: int) -> str:
    return (_EPOCH + timedelta(seconds=seconds)).isoformat()


# The spans of a batch share their seconds.
_whole_second: Remembered[int, str] = Remembered(_iso_second, 65_536)


def _timestamp(stamp: Timestamp, _: int, __: str) -> str:
    """As Timestamp.ToJsonString writes it (0, 3, 6 or 9 digits of fraction), at a third of
    the cost."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not 0 <= nanos < 1_000_000_000:
        return stamp.ToJsonString()  # which refuses it, saying why
    whole = _whole_second(seconds)
    if not nanos:
        return f"{whole}Z"
    if not nanos % 1_000_000:
        return f"{whole}.{nanos // 1_000_000:03d}Z"
    if not nanos % 1000:
        return f"{whole}.{nanos // 1000:06d}Z"
    return f"{whole}.{nanos:09d}Z"


def _double(number: float, _: int, __: str) -> float | str:
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def _value(value: Value, depth: int, path: str) -> Any:
    if depth > MAX_DEPTH:
        return TRUNCATED
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return sanitize_text(value.string_value)
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise NotFinite(path)
        return number
    if kind == "struct_value":
        return _struct(value.struct_value, depth, path)
    if kind == "list_value":
        return _list(value.list_value, depth, path)
    if kind == "bool_value":
        return value.bool_value
    return None  # null, or nothing set


def _struct(struct: Struct, depth: int, path: str) -> Any:
    if depth > MAX_DEPTH:
        return TRUNCATED
    out: dict[str, Any] = {}
    nested = depth + 1
    for key, item in struct.fields.items():
        stored_key, masked = _struct_key(key)
        out[stored_key] = MASK if masked else _value(item, nested, path)
    return out


def _stored_key(key: str) -> tuple[str, bool]:
    """A free-form key as stored, and whether its value is masked (a credential's name)."""
    return sanitize_text(key), sensitive_name(key)


_struct_key = Remembered(_stored_key, 65_536)


def _list(values: ListValue, depth: int, path: str) -> Any:
    nested = depth + 1
    return [_value(item, nested, path) for item in values.values]


def parse_stored(body: str | bytes) -> pb.Span:
    """A stored span back as a message: what `json_format.Parse` gives for the stored JSON,
    at a tenth of the cost (lists, traces and merges parse every span they touch). Only the
    service's own JSON comes here; anything else it does not know is refused as Parse would."""
    span = pb.Span()
    _fill(span, orjson.loads(body))
    return span


Fill = Callable[[Message, str, Any], None]
_FILLERS: dict[str, dict[str, Fill]] = {}


def _fill(message: Message, data: dict[str, Any]) -> None:
    descriptor = message.DESCRIPTOR
    fillers = _FILLERS.get(descriptor.full_name) or _fillers(descriptor)
    for name, value in data.items():
        fill = fillers.get(name)
        if fill is None:
            raise ValueError(f"{descriptor.full_name} has no field {name!r}")
        fill(message, name, value)


def _fillers(descriptor: Any) -> dict[str, Fill]:
    found = {field.name: _filler(field) for field in descriptor.fields}
    _FILLERS[descriptor.full_name] = found
    return found


def _filler(field: FieldDescriptor) -> Fill:
    if _is_map(field):
        assert field.message_type is not None
        value_field = field.message_type.fields_by_name["value"]
        if value_field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return lambda m, n, v: getattr(m, n).update({k: float(x) for k, x in v.items()})
        return lambda m, n, v: getattr(m, n).update(v)
    if field.is_repeated:
        if field.message_type is None and field.enum_type is None:
            convert = _scalar(field)

            def repeated(m: Message, n: str, v: Any) -> None:
                if not isinstance(v, list):
                    raise TypeError(f"{n} is a list, not {type(v).__name__}")
                getattr(m, n).extend([convert(x) for x in v])

            return repeated
        raise TypeError(f"no parser for the repeated field {field.full_name}")
    return _one_filler(field)


def _scalar(field: FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
        return int
    return lambda value: value


def _one_filler(field: FieldDescriptor) -> Fill:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return lambda m, n, v: getattr(m, n).FromJsonString(v)
        if name == "google.protobuf.Value":
            return lambda m, n, v: _set_value(getattr(m, n), v)
        if name == "google.protobuf.Struct":
            return lambda m, n, v: _set_struct(getattr(m, n), v)

        def sub_message(m: Message, n: str, v: Any) -> None:
            held = getattr(m, n)
            held.SetInParent()  # present even when empty, as Parse leaves it
            _fill(held, v)

        return sub_message
    if field.enum_type is not None:
        numbers = {v.name: v.number for v in field.enum_type.values}
        return lambda m, n, v: setattr(m, n, numbers[v] if isinstance(v, str) else v)
    convert = _scalar(field)
    return lambda m, n, v: setattr(m, n, convert(v))


def _set_struct(struct: Struct, data: dict[str, Any]) -> None:
    struct.Clear()
    fields = struct.fields
    for key, item in data.items():
        _set_value(fields[key], item)


def _set_value(value: Value, data: Any) -> None:
    if data is None:
        value.null_value = 0  # type: ignore[assignment]
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = data
    elif isinstance(data, dict):
        _set_struct(value.struct_value, data)
    elif isinstance(data, list):
        items = value.list_value
        items.Clear()
        for item in data:
            _set_value(items.values.add(), item)
    else:
        raise TypeError(f"not a JSON value: {type(data).__name__}")
