"""Enum values in JSON as short lower-case names: "training" for DEPLOYMENT_STATE_TRAINING.

The protos follow the style guide (values prefixed with their enum's name); JSON clients get the
names a person would write, as in DESIGN.md's request example ("method": "sft"). Requests may
use either form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

_WORD = re.compile(r"(?<!^)(?=[A-Z])")
Convert = Callable[[EnumDescriptor, Any], Any]


def _prefix(enum: EnumDescriptor) -> str:
    return _WORD.sub("_", enum.name).upper() + "_"


def short(enum: EnumDescriptor, name: str) -> str:
    return name.removeprefix(_prefix(enum)).lower()


def shorten(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """Rewrite, in place, the enum names in `data` (the JSON form of a `descriptor` message)."""
    _walk(descriptor, data, short)
    return data


def expand(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """The reverse of `shorten`, for requests; full names and numbers are left as they are."""

    def full(enum: EnumDescriptor, value: Any) -> Any:
        if isinstance(value, str) and value.isascii():
            candidate = _prefix(enum) + value.upper()
            if candidate in enum.values_by_name:
                return candidate
        return value

    _walk(descriptor, data, full)
    return data


def _walk(descriptor: Descriptor, data: Any, convert: Convert) -> Any:
    if not isinstance(data, dict):
        return data
    fields = {**descriptor.fields_by_name, **{f.json_name: f for f in descriptor.fields}}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue
        data[key] = _value(field, value, convert)
    return data


def _value(field: FieldDescriptor, value: Any, convert: Convert) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        inner = field.message_type.fields_by_name["value"]
        if isinstance(value, dict):
            return {k: _single(inner, v, convert) for k, v in value.items()}
        return value
    if field.is_repeated and isinstance(value, list):
        return [_single(field, item, convert) for item in value]
    return _single(field, value, convert)


def _single(field: FieldDescriptor, value: Any, convert: Convert) -> Any:
    if field.enum_type is not None and isinstance(value, str):
        return convert(field.enum_type, value)
    if field.message_type is not None and not field.message_type.full_name.startswith(
        "google.protobuf."
    ):
        return _walk(field.message_type, value, convert)
    return value
