"""The gateway's ASGI application.

Every route is authenticated unless it is in the short public list (probes, metrics, the OpenAPI
document, and the download route, where the URL's token is the credential). Unary routes are
generated from the protos' HTTP rules; uploads and downloads stream and are written by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import openapi
from gateway.auth import Authenticator, AuthError, KeysUnavailable
from gateway.downloads import Downloads
from gateway.errors import error_response
from gateway.events import sse_endpoint
from gateway.exports import export_endpoint
from gateway.limits import Limits
from gateway.observe import ROUTE_KEY, Observe
from gateway.otlp import ROUTE as OTLP_ROUTE
from gateway.otlp import Otlp
from gateway.outputs import ROUTE as OUTPUT_ROUTE
from gateway.outputs import Outputs
from gateway.rules import HttpRule, http_rules
from gateway.settings import GatewaySettings
from gateway.sources import Sources
from gateway.transcode import BEARER_FIELDS, BYTE_STREAMS, Endpoint, unary_endpoint
from gateway.uploads import Uploads
from services.common import context, redact
from services.common.client import open_channel
from tunelab.datasets.v1 import datasets_service_pb2, datasets_service_pb2_grpc
from tunelab.deploy.v1 import deploy_service_pb2, deploy_service_pb2_grpc
from tunelab.eval.v1 import eval_service_pb2
from tunelab.tracing.v1 import tracing_service_pb2

log = logging.getLogger(__name__)

# The services behind the gateway, by name: the proto file whose HTTP rules become routes.
UPSTREAMS = {
    "datasets": datasets_service_pb2.DESCRIPTOR,
    "deploy": deploy_service_pb2.DESCRIPTOR,
    "tracing": tracing_service_pb2.DESCRIPTOR,
    "eval": eval_service_pb2.DESCRIPTOR,
}

# Methods whose routes stream and are served by hand-written endpoints.
STREAMING = {"UploadDataset", "RedeemDownloadToken", "UploadOutput", "DownloadOutput"}
DOWNLOAD_ROUTE = "/v1/dataset-downloads/{token}"
# Routes that cost the services much per call: limited per user (gateway/limits.py).
EXPENSIVE = {"ExportSpans", "GetAnalytics", "WatchDeployment", "StreamDeploymentLogs"}
IDEMPOTENT = [
    ("tunelab.datasets.v1.DatasetsService", "FinishDownload"),
    # The pod numbers its lines: a batch sent again is stored once.
    ("tunelab.deploy.v1.DeployService", "AppendDeploymentLogs"),
    # Idempotent on (trace_id, span_id): a retried batch adds nothing.
    ("tunelab.tracing.v1.TracingService", "IngestSpans"),
    ("opentelemetry.proto.collector.trace.v1.TraceService", "Export"),
]
# Bearer tokens, not cookies: no credentials mode, so no CSRF surface.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Range",
    "Range",
    "X-Request-Id",
]
CORS_RESPONSE_HEADERS = [
    "Content-Disposition",
    "Content-Range",
    "ETag",
    "Location",
    "Repr-Digest",
    "X-Checksum-Sha256",
    "X-Download-Uses-Left",
    "X-Request-Id",
]


def create_app(settings: GatewaySettings, authenticator: Authenticator | None = None) -> Starlette:
    """Build the app; call it with an event loop running (gRPC channels bind to it)."""
    if authenticator is None:
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        if secret:
            redact.register(secret)
        try:
            authenticator = Authenticator(
                hs256_secret=secret,
                jwks_url=settings.jwks_url,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )
        except ValueError as exc:
            raise SystemExit(f"gateway: {exc}") from exc
    token = settings.require_internal_token()
    rules = {name: http_rules(file) for name, file in UPSTREAMS.items()}
    addresses = {
        "datasets": settings.datasets_address,
        "deploy": settings.deploy_address,
        "tracing": settings.tracing_address,
        "eval": settings.eval_address,
    }
    channels = {
        name: open_channel(
            address,
            token,
            retry=_idempotent(rules[name]),
            timeout=settings.call_timeout_seconds,
            ready_wait=settings.ready_wait_seconds,
        )
        for name, address in addresses.items()
    }
    datasets = datasets_service_pb2_grpc.DatasetsServiceStub(channels["datasets"])
    downloads = Downloads(datasets, Sources(settings.download_buffer_bytes))
    outputs = Outputs(
        deploy_service_pb2_grpc.DeployServiceStub(channels["deploy"]),
        settings.upload_timeout_seconds,
        settings.max_output_bytes,
    )

    def private(template: str, endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            request.scope[ROUTE_KEY] = template
            try:
                user = await authenticator.authenticate(request.headers.get("authorization"))
            except AuthError as exc:
                return _unauthenticated(str(exc), bool(request.headers.get("authorization")))
            except KeysUnavailable as exc:
                log.error("identity provider unreachable", extra={"error": str(exc.__cause__)})
                return error_response(
                    503, grpc.StatusCode.UNAVAILABLE, "cannot check credentials now; retry"
                )
            context.caller.set(user)
            return await endpoint(request)

        return run

    def public(template: str, endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            request.scope[ROUTE_KEY] = template
            return await endpoint(request)

        return run

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = dict(
            zip(
                channels,
                await asyncio.gather(*(_serving(channel) for channel in channels.values())),
                strict=True,
            )
        )
        ready = all(state == "SERVING" for state in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    document = openapi.document(
        [r for group in rules.values() for r in group], STREAMING, settings.public_url
    )

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    limits = Limits(
        settings.public_rate_limit,
        settings.public_refused_rate_limit,
        settings.user_rate_limit,
        settings.max_streams_per_user,
    )

    def throttled(template: str, endpoint: Endpoint) -> Endpoint:
        return public(template, limits.public(template, endpoint))

    def expensive(template: str, endpoint: Endpoint, *, stream: bool) -> Endpoint:
        return private(template, limits.expensive(template, endpoint, stream=stream))

    routes = [
        Route("/healthz", public("/healthz", healthz)),
        Route("/readyz", public("/readyz", readyz)),
        Route("/metrics", public("/metrics", metrics)),
        Route("/openapi.json", public("/openapi.json", openapi_json)),
        Route(DOWNLOAD_ROUTE, throttled(DOWNLOAD_ROUTE, downloads), methods=["GET", "HEAD"]),
        Route(OTLP_ROUTE, private(OTLP_ROUTE, Otlp(channels["tracing"])), methods=["POST"]),
        # The pod sends its output with its job token; its owner downloads it.
        Route(OUTPUT_ROUTE, throttled(OUTPUT_ROUTE, outputs.upload), methods=["PUT"]),
        Route(
            OUTPUT_ROUTE,
            expensive(OUTPUT_ROUTE, outputs.download, stream=True),
            methods=["GET"],
        ),
        Route(
            "/v1/datasets",
            private(
                "/v1/datasets",
                Uploads(datasets, settings.upload_timeout_seconds, settings.max_upload_bytes),
            ),
            methods=["POST"],
        ),
    ]
    # Unary calls that may take longer than the default deadline.
    slow = {"Evaluate": settings.evaluate_timeout_seconds}
    for service, group in rules.items():
        for rule in group:
            if rule.method.name in STREAMING:
                continue
            if rule.method.name in BYTE_STREAMS:
                endpoint = export_endpoint(
                    rule, channels[service], service, settings.export_timeout_seconds
                )
            elif rule.server_streaming:
                endpoint = sse_endpoint(
                    rule, channels[service], service, settings.watch_timeout_seconds
                )
            else:
                endpoint = unary_endpoint(
                    rule, channels[service], service, timeout=slow.get(rule.method.name)
                )
            name = rule.method.name
            if name in BEARER_FIELDS:
                guarded = throttled(rule.path, endpoint)
            elif name in EXPENSIVE:
                guarded = expensive(rule.path, endpoint, stream=rule.server_streaming)
            else:
                guarded = private(rule.path, endpoint)
            routes.append(Route(rule.path, guarded, methods=[rule.verb]))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await downloads.drain()
        await asyncio.gather(*(channel.close() for channel in channels.values()))

    middleware = [Middleware(Observe)]
    if settings.cors_origins:  # outermost, so that even Observe's JSON 500 carries CORS headers
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_RESPONSE_HEADERS,
                max_age=600,
            ),
        )
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )


def _idempotent(rules: list[HttpRule]) -> dict[str, list[str]]:
    """Calls safe for the channel to retry when a service is briefly away: the reads (GET
    routes) and the ones made idempotent on purpose."""
    retry: dict[str, list[str]] = {}
    for rule in rules:
        if rule.verb == "GET" and not rule.server_streaming and rule.method.name not in STREAMING:
            retry.setdefault(rule.method.containing_service.full_name, []).append(rule.method.name)
    for service, method in IDEMPOTENT:
        retry.setdefault(service, []).append(method)
    return retry


async def _serving(channel: grpc.aio.Channel) -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1.0
        )
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _unauthenticated(message: str, had_credentials: bool) -> Response:
    challenge = 'Bearer realm="tunelab"'
    if had_credentials:  # RFC 6750 allows printable ASCII but quote and backslash here
        description = "".join(c for c in message if " " <= c <= "~" and c not in '"\\')
        challenge += f', error="invalid_token", error_description="{description}"'
    return error_response(
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        message,
        reason="UNAUTHENTICATED",
        headers={"WWW-Authenticate": challenge},
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(
            405,
            grpc.StatusCode.UNIMPLEMENTED,
            f"{request.method} is not allowed on this route; it takes {allowed}"
            + (" (curl -T sends PUT: add -X POST)" if request.method == "PUT" else ""),
            reason="METHOD_NOT_ALLOWED",
            headers=exc.headers,
        )
    if exc.status_code == 404:
        return error_response(
            404, grpc.StatusCode.NOT_FOUND, "no such route; /openapi.json lists them all"
        )
    return error_response(exc.status_code, grpc.StatusCode.UNKNOWN, str(exc.detail))
