"""JSON checks: the output parses as JSON; it matches a JSON Schema (Draft 2020-12)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from services.eval.validators.params import Params
from services.eval.validators.subject import Finding, Subject, binary, hard_fail
from services.eval.validators.text import Check

# Parsing is linear (~20 ms for 5 MB) but validation walks every value; past this the output
# fails with a reason rather than tying up a worker.
MAX_JSON_CHARS = 10_000_000


def _parse(output: str) -> tuple[Any, str | None]:
    """The parsed value, or an error message. A fenced ```json block is not unwrapped: the
    check is whether the output itself is JSON."""
    if len(output) > MAX_JSON_CHARS:
        return None, f"output is {len(output)} characters, over the {MAX_JSON_CHARS} JSON cap"
    try:
        return json.loads(output), None
    except RecursionError:
        return None, "output is JSON nested too deeply to parse"
    except ValueError as exc:
        return None, f"output is not JSON: {exc}"


def build_is_json(params: Params) -> Check:
    def check(subject: Subject) -> Finding:
        _, error = _parse(subject.output)
        return binary(error is None, error or "output is valid JSON")

    return check


def build_json_schema(params: Params) -> Check:
    schema = params.value("schema")
    if not isinstance(schema, dict | bool):
        raise params.error("schema", "must be a JSON Schema (an object or a boolean)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        raise params.error(
            "schema", f"is not a valid Draft 2020-12 schema at {where}: {exc.message}"
        ) from None
    validator = jsonschema.Draft202012Validator(schema)

    def check(subject: Subject) -> Finding:
        value, error = _parse(subject.output)
        if error is not None:
            return hard_fail(error)
        try:
            problem = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except RecursionError:
            return hard_fail("output is nested too deeply to validate")
        if problem is None:
            return binary(True, "output matches the schema")
        where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
        return binary(False, f"output does not match the schema at {where}: {problem.message}")

    return check
