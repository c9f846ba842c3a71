"""The HTTP bindings (google.api.http) declared in our protos, read from their descriptors.

One proto defines both the gRPC method and its REST route; the gateway's routes and its OpenAPI
document are both built from what this module returns, so they cannot disagree with the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

_VERBS = ("get", "put", "post", "delete", "patch")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class HttpRule:
    method: MethodDescriptor
    verb: str  # upper case
    path: str  # /v1/datasets/{dataset_id}: Starlette's syntax too
    body: str  # "", "*" or a field name
    response_body: str  # "" or a field name

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def rpc_path(self) -> str:
        """The gRPC method path: /package.Service/Method."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


def http_rules(*files: FileDescriptor) -> list[HttpRule]:
    rules = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rules.append(_rule(method, options.Extensions[annotations_pb2.http]))
    return rules


def _rule(method: MethodDescriptor, http: http_pb2.HttpRule) -> HttpRule:
    kind = http.WhichOneof("pattern")
    if kind not in _VERBS:
        raise ValueError(f"{method.full_name}: unsupported HTTP pattern {kind!r}")
    path = getattr(http, kind)
    for param in _PARAM.findall(path):
        if param not in method.input_type.fields_by_name:
            raise ValueError(f"{method.full_name}: path parameter {param} is not a request field")
    if "=" in path or "*" in path:
        raise ValueError(f"{method.full_name}: only plain {{field}} path parameters are supported")
    return HttpRule(method, kind.upper(), path, http.body, http.response_body)
