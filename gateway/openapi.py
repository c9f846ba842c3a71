"""The OpenAPI 3.1 document, built from the same HTTP rules as the routes, with the protos'
comments as descriptions; the streaming routes and the probes are described by hand below."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.rules import HttpRule
from gateway.transcode import (
    BEARER_FIELDS,
    BYTE_STREAMS,
    IDEMPOTENCY_FIELD,
    query_fields,
    success_status,
)
from services.common import enum_names as enums
from tunelab.datasets.v1 import datasets_pb2
from tunelab.deploy.v1 import deployments_pb2

JSON = "application/json"
ERROR_REF = {"$ref": "#/components/schemas/Error"}

_SCALAR: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32"},
    # proto3's JSON mapping writes 64-bit integers as strings (JavaScript loses precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
}


class Comments:
    """Leading comments of messages, fields, enums and methods, from the descriptor set that
    `make protos` writes with source info (the generated modules carry none)."""

    def __init__(self) -> None:
        self._text: dict[str, str] = {}
        raw = resources.files("tunelab").joinpath("descriptors.binpb").read_bytes()
        for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
            names = _names(file)
            for location in file.source_code_info.location:
                name = names.get(tuple(location.path))
                if name and location.leading_comments.strip():
                    self._text[name] = " ".join(location.leading_comments.split())

    def __call__(self, full_name: str) -> str:
        return self._text.get(full_name, "")


def _names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-location paths (field numbers in descriptor.proto) to full names."""
    names: dict[tuple[int, ...], str] = {}
    prefix = file.package

    def message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        full = f"{scope}.{msg.name}"
        names[path] = full
        for i, field in enumerate(msg.field):
            names[(*path, 2, i)] = f"{full}.{field.name}"
        for i, nested in enumerate(msg.nested_type):
            message(nested, (*path, 3, i), full)
        for i, enum in enumerate(msg.enum_type):
            enumeration(enum, (*path, 4, i), full)

    def enumeration(
        enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
    ) -> None:
        names[path] = f"{scope}.{enum.name}"
        for i, value in enumerate(enum.value):
            names[(*path, 2, i)] = f"{scope}.{enum.name}.{value.name}"

    for i, msg in enumerate(file.message_type):
        message(msg, (4, i), prefix)
    for i, enum in enumerate(file.enum_type):
        enumeration(enum, (5, i), prefix)
    for i, service in enumerate(file.service):
        names[(6, i)] = f"{prefix}.{service.name}"
        for j, method in enumerate(service.method):
            names[(6, i, 2, j)] = f"{prefix}.{service.name}.{method.name}"
    return names


class Schemas:
    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.defined: dict[str, Any] = {}

    def ref(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        name = message.name
        if name not in self.defined:
            self.defined[name] = {}  # placeholder: breaks recursion
            self.defined[name] = self._object(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, message: Descriptor) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: self.field(f) for f in message.fields},
        }
        if text := self.comments(message.full_name):
            schema["description"] = text
        return schema

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            schema = self.ref(field.message_type)
        elif field.enum_type is not None:
            schema = self._enum(field.enum_type)
        else:
            schema = dict(_SCALAR[field.type])
        if field.is_repeated:
            schema = {"type": "array", "items": schema}
        if text := self.comments(field.full_name):
            schema = (
                {**schema, "description": text}
                if "$ref" not in schema
                else {
                    "allOf": [schema],
                    "description": text,
                }
            )
        return schema

    def _enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        values = [enums.short(enum, v.name) for v in enum.values]
        lines = [
            f"{enums.short(enum, v.name)}: {self.comments(f'{enum.full_name}.{v.name}')}"
            for v in enum.values
        ]
        return {"type": "string", "enum": values, "description": "; ".join(lines)}


def document(rules: Iterable[HttpRule], hand_written: set[str], server: str) -> dict[str, Any]:
    comments = Comments()
    schemas = Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    for rule in rules:
        if rule.method.name in hand_written:
            continue
        paths.setdefault(rule.path, {})[rule.verb.lower()] = _operation(rule, schemas, comments)
    _hand_written(paths, schemas)
    _link(paths)
    schemas.defined["Error"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tunelab",
            "version": "v1",
            "description": "The HTTP API of the tunelab fine-tuning platform. Authenticate with "
            "`Authorization: Bearer <JWT>`; in development `tunelab token --user NAME` prints "
            "one. Fields are snake_case; 64-bit integers are JSON strings (proto3 JSON "
            "mapping). Errors have the body "
            '`{"error": {"code", "status", "message", "reason", "details", "request_id"}}`; '
            "`reason` is the machine-readable cause (for example TOKEN_EXPIRED).",
        },
        "servers": [{"url": server}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.defined.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "jobToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The job token a deployment's pod was given (tljb_...).",
                },
            },
        },
        "security": [{"bearer": []}],
    }


def _operation(rule: HttpRule, schemas: Schemas, comments: Comments) -> dict[str, Any]:
    method = rule.method
    request_fields = {f.name: f for f in method.input_type.fields}
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schemas.field(request_fields[name]),
        }
        for name in rule.path_params
    ]
    parameters += [
        {"name": name, "in": "query", "schema": schemas.field(field)}
        for name, field in query_fields(rule).items()
    ]
    if IDEMPOTENCY_FIELD in request_fields:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "schema": {"type": "string", "maxLength": 128},
                "description": "Retrying with the same key returns the first result.",
            }
        )
    status = success_status(rule)
    reply = method.output_type
    if rule.response_body:
        reply = method.output_type.fields_by_name[rule.response_body].message_type or reply
    success: dict[str, Any] = {"description": "Success."}
    if method.name in BYTE_STREAMS:
        binary = {"type": "string", "format": "binary"}
        success["description"] = "The file, streamed (format=csv, json or jsonl)."
        success["content"] = {
            media.split(";")[0]: {"schema": binary}
            for media in ("text/csv", "application/json", "application/x-ndjson")
        }
    elif rule.server_streaming:
        success["description"] = (
            "Server-sent events: each `message` event's data is one JSON object as below; a "
            "failure after the stream started is a final `error` event with the error body."
        )
        success["content"] = {"text/event-stream": {"schema": schemas.ref(reply)}}
    elif status != 204:
        success["content"] = {JSON: {"schema": schemas.ref(reply)}}
    operation: dict[str, Any] = {
        "operationId": method.name,
        "tags": [method.containing_service.name],
        "summary": _first_sentence(comments(method.full_name)) or method.name,
        "description": comments(method.full_name),
        "parameters": parameters,
        "responses": {
            str(status): success,
            "401": _error("Missing, expired or invalid bearer token."),
            "default": _error("An error."),
        },
    }
    if method.name in BEARER_FIELDS:
        operation["security"] = [{"jobToken": []}]
    if rule.body and rule.body != "*":
        body_field = method.input_type.fields_by_name[rule.body]
        operation["requestBody"] = {"content": {JSON: {"schema": schemas.field(body_field)}}}
    if rule.body == "*":  # the path parameters are not part of the body
        body_schema = {
            "type": "object",
            "properties": {
                f.name: schemas.field(f)
                for f in method.input_type.fields
                if f.name not in rule.path_params
            },
            "additionalProperties": False,
        }
        operation["requestBody"] = {"content": {JSON: {"schema": body_schema}}}
    return operation


# OpenAPI links: where the ids an operation returns (or was sent) are used next. Clients and
# API fuzzers follow them from a created resource to the operations on it.
_DATASET = {"dataset_id": "$response.body#/id"}
_DEPLOYMENT = {"deployment_id": "$response.body#/id"}
LINKS: dict[str, dict[str, dict[str, str]]] = {
    "UploadDataset": {
        "GetDataset": _DATASET,
        "CreateDownloadToken": _DATASET,
        "ListDownloadTokens": _DATASET,
        "ListDownloadEvents": _DATASET,
        "DeleteDataset": _DATASET,
    },
    "CreateDownloadToken": {
        "DownloadDataset": {"token": "$response.body#/token"},
        "CheckDownload": {"token": "$response.body#/token"},
        "RevokeDownloadToken": {
            "dataset_id": "$request.path.dataset_id",
            "token_id": "$response.body#/token_id",
        },
    },
    "CreateDeployment": {
        name: _DEPLOYMENT
        for name in (
            "GetDeployment",
            "ListDeploymentEvents",
            "ListDeploymentMetrics",
            "WatchDeployment",
            "StreamDeploymentLogs",
            "CancelDeployment",
            "DownloadOutput",
        )
    },
    "IngestSpans": {"GetTrace": {"trace_id": "$request.body#/spans/0/trace_id"}},
}


def _link(paths: dict[str, dict[str, Any]]) -> None:
    for operations in paths.values():
        for operation in operations.values():
            targets = LINKS.get(operation.get("operationId", ""))
            if not targets:
                continue
            status = next(code for code in operation["responses"] if code.startswith("2"))
            operation["responses"][status]["links"] = {
                target: {"operationId": target, "parameters": parameters}
                for target, parameters in targets.items()
            }


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ERROR_REF}}}


def _hand_written(paths: dict[str, dict[str, Any]], schemas: Schemas) -> None:
    dataset = schemas.ref(datasets_pb2.Dataset.DESCRIPTOR)
    paths.setdefault("/v1/datasets", {})["post"] = {
        "operationId": "UploadDataset",
        "tags": ["DatasetsService"],
        "summary": "Upload a JSONL dataset, streamed",
        "description": "The raw request body is the file: `curl -T train.jsonl -X POST ...` "
        "streams it (`--data-binary @file` reads it into memory first; `-d` and `-F` send forms, "
        "which are refused). It is hashed, counted and checked as it streams; the format is "
        "detected from the content, and a file that is not usable for training is still stored, "
        "with format invalid and a format_error naming the first bad line.",
        "parameters": [
            {
                "name": "name",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Display name: a file name, no '/', '\\\\' or control characters.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "responses": {
            "201": {"description": "Stored.", "content": {JSON: {"schema": dataset}}},
            "401": _error("Missing, expired or invalid bearer token."),
            "413": _error("Larger than the service's upload limit."),
            "415": _error("Sent as a form (multipart or urlencoded) instead of the raw body."),
            "default": _error("An error."),
        },
    }
    download_headers = {
        name: {"schema": {"type": "string"}, "description": text}
        for name, text in {
            "ETag": "The quoted SHA-256 of the whole file; use it in If-Range.",
            "X-Checksum-Sha256": "Hex SHA-256 of the whole file.",
            "Repr-Digest": "RFC 9530 digest of the whole file.",
            "Accept-Ranges": "bytes",
            "Content-Range": "On 206: the bytes sent.",
            "X-Download-Uses-Left": "Downloads the token still allows.",
        }.items()
    }
    binary = {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}
    download = {
        "tags": ["DatasetsService"],
        "security": [],
        "parameters": [
            {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "Range",
                "in": "header",
                "schema": {"type": "string"},
                "description": "One byte range, e.g. bytes=1048576-",
            },
            {"name": "If-Range", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "The whole file.",
                "headers": download_headers,
                "content": binary,
            },
            "206": {
                "description": "The requested range.",
                "headers": download_headers,
                "content": binary,
            },
            "403": _error("The token expired, was revoked or is used up."),
            "404": _error("The token is unknown."),
            "416": _error("The range lies outside the file."),
        },
    }
    paths["/v1/dataset-downloads/{token}"] = {
        "get": {
            **download,
            "operationId": "DownloadDataset",
            "summary": "Download a dataset with a download token (no other credential)",
            "description": "Each GET that transfers bytes counts one of the token's uses and is "
            "audited; refused attempts are audited too. Resume with a Range request.",
        },
        "head": {
            **download,
            "operationId": "CheckDownload",
            "summary": "Check a download token and see the file's headers; counts no use",
        },
    }
    output = schemas.ref(deployments_pb2.Output.DESCRIPTOR)
    gzip = {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}
    deployment_id = {"name": "deployment_id", "in": "path", "required": True}
    # DeleteOutput shares the path: its HTTP rule describes it.
    outputs = "/v1/deployments/{deployment_id}/output"
    paths[outputs] = paths.get(outputs, {}) | {
        "put": {
            "operationId": "UploadOutput",
            "tags": ["DeployService"],
            "summary": "The pod sends what the run trained (a .tar.gz), with its job token",
            "description": "The raw request body is the file; sending it again replaces it. "
            "Only while the run is live, and only with that run's job token.",
            "security": [{"jobToken": []}],
            "parameters": [{**deployment_id, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": gzip},
            "responses": {
                "201": {"description": "Stored.", "content": {JSON: {"schema": output}}},
                "401": _error("Not this run's job token."),
                "413": _error("Larger than the deploy service's output limit."),
                "default": _error("An error."),
            },
        },
        "get": {
            "operationId": "DownloadOutput",
            "tags": ["DeployService"],
            "summary": "Download what the run trained: the pod's output directory, .tar.gz",
            "parameters": [{**deployment_id, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "The file; ETag and X-Checksum-Sha256 carry its SHA-256.",
                    "content": gzip,
                },
                "404": _error("No such run, or it has no output (yet)."),
                "default": _error("An error."),
            },
        },
    }
    otlp = {"type": "string", "format": "binary"}
    paths.setdefault("/v1/traces", {})["post"] = {
        "operationId": "ExportOtlpTraces",
        "tags": ["TracingService"],
        "summary": "OTLP/HTTP trace export, as OpenTelemetry exporters send it",
        "description": "An ExportTraceServiceRequest as application/x-protobuf or OTLP JSON "
        "(ids in hex), optionally gzip-compressed; the answer is an "
        "ExportTraceServiceResponse in the same encoding, with partial_success counting the "
        "spans that were rejected. Point an exporter at "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=<gateway>/v1/traces with the Authorization header.",
        "requestBody": {
            "required": True,
            "content": {"application/x-protobuf": {"schema": otlp}, "application/json": {}},
        },
        "responses": {
            "200": {
                "description": "Stored (see partial_success).",
                "content": {"application/x-protobuf": {"schema": otlp}, "application/json": {}},
            },
            "400": _error("Not an OTLP trace export, or too large."),
            "415": _error("Neither protobuf nor JSON."),
            "default": _error("An error."),
        },
    }
    probe = {"security": [], "tags": ["Operations"]}
    paths["/healthz"] = {
        "get": {
            **probe,
            "operationId": "Healthz",
            "summary": "Liveness",
            "responses": {"200": {"description": "The process is up."}},
        }
    }
    paths["/readyz"] = {
        "get": {
            **probe,
            "operationId": "Readyz",
            "summary": "Readiness: the services this gateway needs answer their health checks",
            "responses": {
                "200": {"description": "Ready."},
                "503": {"description": "A service is not serving."},
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            **probe,
            "operationId": "Metrics",
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Text exposition format."}},
        }
    }
    paths["/openapi.json"] = {
        "get": {
            **probe,
            "operationId": "OpenApi",
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1."}},
        }
    }


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The gRPC status code name."},
                "message": {"type": "string", "description": "What went wrong and what to do."},
                "reason": {
                    "type": "string",
                    "description": "ErrorInfo reason, e.g. TOKEN_EXPIRED.",
                },
                "details": {"type": "array", "items": {"type": "object"}},
                "request_id": {
                    "type": "string",
                    "description": "Quote it when reporting a problem.",
                },
            },
            "required": ["code", "status", "message"],
        }
    },
}
