"""Prometheus metrics shared by every service, and the scrape endpoint."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

GRPC_HANDLED = Counter(
    "tunelab_grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "tunelab_grpc_server_handling_seconds",
    "Time from receiving an RPC to its completion.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def serve_metrics(address: str) -> None:
    """Expose /metrics on host:port in a background thread; an empty address disables it."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")
    log.info("metrics listening", extra={"address": address})
