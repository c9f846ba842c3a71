"""The gateway's routes and its OpenAPI document come from the same rules: they must agree."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway.app import DOWNLOAD_ROUTE, create_app
from gateway.auth import Authenticator
from gateway.settings import GatewaySettings
from tests.conftest import INTERNAL_TOKEN

PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", DOWNLOAD_ROUTE}


async def test_openapi_documents_exactly_the_routes_served() -> None:
    settings = GatewaySettings(internal_token=INTERNAL_TOKEN, jwt_secret="j" * 40)
    app = create_app(settings)
    served = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD" or route.path == DOWNLOAD_ROUTE  # Starlette adds HEAD to every GET
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        document = (await c.get("/openapi.json")).json()
        unauthenticated = await c.get("/v1/datasets")
    assert unauthenticated.status_code == 401
    documented = {(verb, path) for path, ops in document["paths"].items() for verb in ops}
    assert served == documented
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert (operation.get("security") == []) == (path in PUBLIC), path
            assert operation["summary"]
    dataset = document["components"]["schemas"]["Dataset"]
    assert dataset["properties"]["size_bytes"] == {
        "type": "string",
        "format": "int64",
        "description": "Size of the stored file in bytes.",
    }
    assert dataset["description"].startswith("A training dataset")
    validate(document)  # a valid OpenAPI 3.1 document, as code generators need
    assert_links_resolve(document)
    token_body = document["paths"]["/v1/datasets/{dataset_id}/download-tokens"]["post"]
    assert set(
        token_body["requestBody"]["content"]["application/json"]["schema"]["properties"]
    ) == {
        "ttl_seconds",
        "max_uses",
    }


def assert_links_resolve(document: dict[str, Any]) -> None:
    """Every link names an operation that exists and fills parameters it has."""
    operations = {
        op["operationId"]: op for ops in document["paths"].values() for op in ops.values()
    }
    linked = 0
    for operation in operations.values():
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                target = operations[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert set(link["parameters"]) <= names, link
                linked += 1
    assert linked >= 15


async def test_cors_is_off_by_default_and_exact_when_configured() -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    closed = create_app(GatewaySettings(internal_token=INTERNAL_TOKEN, jwt_secret="j" * 40))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=closed), base_url="http://t"
    ) as c:
        response = await c.options("/v1/datasets", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    opened = create_app(
        GatewaySettings(
            internal_token=INTERNAL_TOKEN,
            jwt_secret="j" * 40,
            cors_origins=["https://app.example"],
        )
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=opened), base_url="http://t"
    ) as c:
        allowed = await c.options("/v1/datasets", headers=preflight)
        other = await c.options(
            "/v1/datasets", headers={**preflight, "Origin": "https://evil.example"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    assert other.status_code == 400


class _Exploding(Authenticator):
    def __init__(self) -> None:
        super().__init__(hs256_secret="k" * 40)

    async def authenticate(self, authorization: str | None) -> str:
        raise RuntimeError("boom: sk-live-" + "q" * 30)


async def test_unexpected_errors_are_json_500_with_the_request_id() -> None:
    settings = GatewaySettings(internal_token=INTERNAL_TOKEN, jwt_secret="j" * 40)
    app = create_app(settings, authenticator=_Exploding())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/v1/datasets", headers={"X-Request-Id": "rid-9"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["status"], error["reason"], error["request_id"]) == (
        "INTERNAL",
        "INTERNAL",
        "rid-9",
    )
    assert "boom" not in response.text
    assert response.headers["x-request-id"] == "rid-9"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_conflicting_auth_settings_stop_the_gateway_with_a_reason() -> None:
    settings = GatewaySettings(
        internal_token=INTERNAL_TOKEN,
        jwt_secret="j" * 40,
        jwks_url="https://idp.example/jwks.json",
    )
    with pytest.raises(SystemExit, match="exactly one"):
        create_app(settings)
