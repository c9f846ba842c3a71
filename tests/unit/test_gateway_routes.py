"""The gateway's routes and its OpenAPI document come from the same rules: they must agree."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.routing import Route

from gateway.app import DOWNLOAD_ROUTE, create_app
from gateway.settings import GatewaySettings
from tests.conftest import INTERNAL_TOKEN

PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", DOWNLOAD_ROUTE}


async def test_openapi_documents_exactly_the_routes_served(tmp_path: Path) -> None:
    settings = GatewaySettings(
        internal_token=INTERNAL_TOKEN, jwt_secret="j" * 40, datasets_storage_dir=tmp_path
    )
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
