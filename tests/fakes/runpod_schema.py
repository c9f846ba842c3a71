"""RunPod's published contracts, loaded for the fake: its v2 OpenAPI document and the GraphQL
subset we call (tests/fixtures/runpod/, see SOURCE.md there).

The fake checks every request it receives and every answer it gives against them, and
`strict_reading` makes the client's own reads visible: each JSON object the client decodes from
a RunPod answer knows the keys its own place in the answer's schema defines (for GraphQL: the
fields the query selected there), and reading any other is a violation. A client reading
`costPerHr` from a v2 pod, or `totalAmount` one level too high, therefore fails the test that
made it, whatever the fake happens to serve.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import graphql
import httpx
import jsonschema
import referencing
import referencing.jsonschema

FIXTURES = Path(__file__).parent.parent / "fixtures" / "runpod"
_URI = "urn:runpod:openapi-v2"
# Names every GraphQL answer may carry besides the schema's fields.
_GRAPHQL_ENVELOPE = frozenset({"data", "errors", "message", "locations", "path", "extensions"})


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    template: str
    spec: Mapping[str, Any]
    pointer: str  # of the operation within the document


class OpenApi:
    def __init__(self, path: Path = FIXTURES / "openapi-v2.json") -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text())
        resource = referencing.Resource.from_contents(
            self.doc, default_specification=referencing.jsonschema.DRAFT202012
        )
        self._registry: referencing.Registry[Any] = referencing.Registry().with_resource(
            _URI, resource
        )
        self._resolver = self._registry.resolver(_URI)
        self._operations: list[tuple[re.Pattern[str], Operation]] = []
        self._shapes: dict[str, _Shape] = {}
        for template, item in self.doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            for method, spec in item.items():
                if method == "parameters":
                    continue
                pointer = _pointer("paths", template, method)
                operation = Operation(spec["operationId"], method.upper(), template, spec, pointer)
                self._operations.append((pattern, operation))

    @property
    def version(self) -> str:
        return str(self.doc["info"]["version"])

    def operation(self, method: str, path: str) -> Operation | None:
        for pattern, operation in self._operations:
            if operation.method == method and pattern.match(path):
                return operation
        return None

    def resolve(self, node: Any) -> Any:
        """A node with its `$ref` (if any) followed."""
        while isinstance(node, dict) and "$ref" in node:
            node = self._resolver.lookup(node["$ref"]).contents
        return node

    # -- requests --------------------------------------------------------------------------

    def check_request(
        self, operation: Operation, query: str, body: Any, has_body: bool
    ) -> list[str]:
        """What is wrong with a request, as RunPod's 422 `errors` would list it."""
        problems: list[str] = []
        params = [
            self.resolve(p)
            for p in (
                *self.doc["paths"][operation.template].get("parameters", []),
                *operation.spec.get("parameters", []),
            )
        ]
        query_params = {p["name"]: p for p in params if p["in"] == "query"}
        sent = parse_qsl(query, keep_blank_values=True)
        for name, raw in sent:
            param = query_params.get(name)
            if param is None:
                problems.append(f"query: unknown parameter {name!r}")
                continue
            value = _query_value(self.resolve(param["schema"]), raw, param)
            problems += self._errors(param["schema"], value, f"query.{name}")
        for name, param in query_params.items():
            if param.get("required") and name not in dict(sent):
                problems.append(f"query: {name} is required")
        request_body = operation.spec.get("requestBody")
        if request_body is None:
            if has_body:
                problems.append("body: this operation takes no body")
            return problems
        if not has_body:
            if request_body.get("required"):
                problems.append("body: required")
            return problems
        content = self.resolve(request_body)["content"]
        schema = content["application/json"]["schema"]
        return problems + self._errors(schema, body, "$")

    # -- responses -------------------------------------------------------------------------

    def response_schema(self, operation: Operation, status: int, media: str) -> Any:
        responses = operation.spec["responses"]
        response = self.resolve(responses.get(str(status)) or responses.get("default"))
        if response is None:
            raise AssertionError(f"{operation.id} documents no {status} answer")
        content = response.get("content")
        if not content:
            return None
        if media not in content:
            raise AssertionError(
                f"{operation.id} documents {sorted(content)} for {status}, not {media}"
            )
        return content[media].get("schema")

    def check_response(self, operation: Operation, status: int, media: str, body: Any) -> list[str]:
        schema = self.response_schema(operation, status, media)
        if schema is None:
            return [] if body in (None, b"", "") else [f"{operation.id} {status} has no body"]
        if media.endswith("json"):
            return self._errors(schema, body, "$")
        return []

    def shape(self, schema: Any) -> _Shape:
        """What an instance of the schema may hold: its properties (each with its schema),
        whether other keys are allowed (and their schema), and its items' schema."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._shapes:
            self._shapes[key] = _shape(self, schema)
        return self._shapes[key]

    def _errors(self, schema: Any, instance: Any, where: str) -> list[str]:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{_URI}#/$defs/none"} if schema is None else _anchored(schema),
            registry=self._registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{where}{''.join(f'[{p!r}]' for p in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(instance)
        ]


def _anchored(schema: Any) -> Any:
    """The schema with its document-relative `$ref`s made absolute."""
    if isinstance(schema, dict):
        return {
            key: (_URI + value if key == "$ref" and value.startswith("#") else _anchored(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_anchored(item) for item in schema]
    return schema


@dataclass
class _Shape:
    properties: dict[str, Any]
    other: Any = None  # additionalProperties' schema: a key outside `properties` is allowed
    open: bool = False  # other keys allowed
    items: Any = None


def _shape(api: OpenApi, schema: Any) -> _Shape:
    """`schema`'s properties merged across allOf / anyOf / oneOf (a nullable alternative
    adds none), following `$ref`s."""
    found = _Shape({})

    def walk(node: Any) -> None:
        node = api.resolve(node)
        if not isinstance(node, dict):
            return
        for name, child in (node.get("properties") or {}).items():
            found.properties.setdefault(name, child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) or extra is True:
            found.open, found.other = True, extra if isinstance(extra, dict) else None
        if "items" in node:
            found.items = node["items"]
        for key in ("allOf", "anyOf", "oneOf"):
            for part in node.get(key) or []:
                walk(part)

    walk(schema)
    return found


def _query_value(schema: Mapping[str, Any], raw: str, param: Mapping[str, Any]) -> Any:
    """A query string value as the schema's type, the way an OpenAPI server parses it."""
    kind = schema.get("type")
    if kind == "array":
        items = raw.split(",") if param.get("explode") is False else [raw]
        return items
    if kind == "integer":
        return int(raw) if re.fullmatch(r"-?\d+", raw) else raw
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    return raw


class GraphQLSchema:
    def __init__(self, path: Path = FIXTURES / "runpod-graphql-subset.graphql") -> None:
        self.schema = graphql.build_schema(path.read_text())

    def check(self, query: str) -> tuple[graphql.DocumentNode | None, list[str]]:
        try:
            document = graphql.parse(query)
        except graphql.GraphQLError as error:
            return None, [error.message]
        return document, [e.message for e in graphql.validate(self.schema, document)]


# -- what the client reads ---------------------------------------------------------------------


class _Strict(dict[str, Any]):
    """A decoded JSON object that reports reads of keys its schema does not define."""

    def __init__(
        self, data: Mapping[str, Any], allowed: frozenset[str] | None, where: str, seen: list[str]
    ) -> None:
        super().__init__(data)
        self._allowed, self._where, self._seen = allowed, where, seen

    def _check(self, key: object) -> None:
        if self._allowed is not None and key not in self._allowed:
            self._seen.append(f"{self._where}: the client read {key!r}, which the schema lacks")

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._check(key)
        return super().__contains__(key)


def _wrap_graphql(value: Any, request: bytes, seen: list[str]) -> Any:
    """A GraphQL answer whose objects allow reading only what the query selected there (a
    field the subset lacks fails the query's validation in the fake already)."""
    try:
        query = json.loads(request)["query"]
        operation = next(
            d
            for d in graphql.parse(query).definitions
            if isinstance(d, graphql.OperationDefinitionNode)
        )
    except (ValueError, KeyError, TypeError, StopIteration, graphql.GraphQLError):
        seen.append("graphql: the client sent no query it could read the answer of")
        return value
    if not isinstance(value, dict):
        return value
    answer = {
        key: _select(item, operation.selection_set, "data", seen) if key == "data" else item
        for key, item in value.items()
    }
    return _Strict(answer, _GRAPHQL_ENVELOPE, "graphql", seen)


def _select(
    value: Any, selection: graphql.SelectionSetNode | None, where: str, seen: list[str]
) -> Any:
    if isinstance(value, list):
        return [_select(item, selection, f"{where}[]", seen) for item in value]
    if not isinstance(value, dict) or selection is None:
        return value
    fields = {
        (f.alias or f.name).value: f
        for f in selection.selections
        if isinstance(f, graphql.FieldNode)
    }
    children = {
        key: _select(item, fields[key].selection_set, f"{where}.{key}", seen)
        if key in fields
        else item
        for key, item in value.items()
    }
    return _Strict(children, frozenset(fields), where, seen)


def _wrap_as(api: OpenApi, value: Any, schema: Any, where: str, seen: list[str]) -> Any:
    """Each object in `value` strict with the names its own place in `schema` defines."""
    if schema is None:
        return value
    shape = api.shape(schema)
    if isinstance(value, dict):
        children = {
            key: _wrap_as(api, item, shape.properties.get(key, shape.other), f"{where}.{key}", seen)
            for key, item in value.items()
        }
        allowed = None if shape.open else frozenset(shape.properties)
        return _Strict(children, allowed, where, seen)
    if isinstance(value, list):
        return [_wrap_as(api, item, shape.items, f"{where}[]", seen) for item in value]
    return value


@contextmanager
def strict_reading(base_url: str, openapi: OpenApi, seen: list[str]) -> Iterator[None]:
    """While active, JSON decoded from answers of the server at `base_url` is strict."""
    original = httpx.Response.json

    def json_of(self: httpx.Response, **kwargs: Any) -> Any:
        value = original(self, **kwargs)
        url = str(self.request.url)
        if not url.startswith(base_url):
            return value
        path = self.request.url.path
        if path == "/graphql":
            return _wrap_graphql(value, self.request.content, seen)
        operation = openapi.operation(self.request.method, path)
        if operation is None:
            seen.append(f"{self.request.method} {path}: not an operation of RunPod's API")
            return value
        media = self.headers.get("content-type", "").split(";")[0].strip()
        schema = openapi.response_schema(operation, self.status_code, media)
        return _wrap_as(openapi, value, schema, operation.id, seen)

    httpx.Response.json = json_of  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.Response.json = original  # type: ignore[method-assign]
