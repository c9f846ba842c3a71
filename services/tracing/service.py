"""Assemble the tracing service from its settings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc

from services.common.db import Database
from services.common.migrations import Migrations
from services.common.server import ServerSpec
from services.tracing import otlp
from services.tracing.prices import PriceTable
from services.tracing.server import TracingServicer, utc_now
from services.tracing.settings import TracingSettings
from services.tracing.store import SpanStore
from services.tracing.workers import Preparer
from tunelab.tracing.v1 import tracing_service_pb2, tracing_service_pb2_grpc

MIGRATIONS = Migrations("tracing", Path(__file__).parent / "migrations")
DOMAIN = "tracing.tunelab.dev"
SERVICE_NAME = tracing_service_pb2.DESCRIPTOR.services_by_name["TracingService"].full_name


def server_spec(
    settings: TracingSettings,
    db: Database,
    *,
    clock: Callable[[], datetime] = utc_now,
    address: str | None = None,
) -> ServerSpec:
    try:
        prices = PriceTable.load(settings.prices_file)
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"tracing: TUNELAB_TRACING_PRICES_FILE is unusable: {exc}") from None
    preparer = Preparer(prices, settings.workers())
    servicer = TracingServicer(SpanStore(db, prices, preparer), settings, clock)
    otlp_servicer = otlp.OtlpTraceServicer(servicer)

    def register(server: grpc.aio.Server) -> None:
        tracing_service_pb2_grpc.add_TracingServiceServicer_to_server(servicer, server)
        otlp.add_to_server(otlp_servicer, server)

    return ServerSpec(
        name="tracing",
        domain=DOMAIN,
        address=address or settings.grpc_address,
        internal_token=settings.require_internal_token(),
        register=register,
        # The OpenTelemetry collector's TraceService too: OTLP exporters send here directly.
        service_names=[SERVICE_NAME, otlp.SERVICE_NAME],
        after_stop=[preparer.close],
    )
