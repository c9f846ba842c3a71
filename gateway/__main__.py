"""python -m gateway (or tunelab-gateway): serve the HTTP gateway with uvicorn."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.server import connection_limit, guarded
from gateway.settings import GatewaySettings
from services.common import logs


def app_from_env() -> Starlette:
    return create_app(GatewaySettings())


def main() -> None:
    settings = GatewaySettings()
    logs.setup(settings.log_level, settings.log_format)
    uvicorn.run(
        "gateway.__main__:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded(settings.header_timeout_seconds, settings.max_header_bytes),
        limit_concurrency=connection_limit(settings.max_connections),
        backlog=settings.backlog,
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=False,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


if __name__ == "__main__":
    main()
