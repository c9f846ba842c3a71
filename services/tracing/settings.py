"""Settings of the tracing service (environment variables TUNELAB_TRACING_*)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import DATABASE_URL, GRPC_ADDRESS, METRICS_ADDRESS, CommonSettings


class TracingSettings(CommonSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNELAB_TRACING_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field("sqlite:///var/tracing.db", description=DATABASE_URL)
    grpc_address: str = Field("127.0.0.1:50053", description=GRPC_ADDRESS)
    metrics_address: str = Field("127.0.0.1:9153", description=METRICS_ADDRESS)
    prices_file: Path | None = Field(
        None,
        description='JSON {"model-prefix": {"input": 2.5, "output": 10, "cache_read": 1.25}} in '
        "dollars per million tokens: added to (or overriding) the built-in price table.",
    )
    max_batch_spans: int = Field(1000, gt=0, le=10_000)
    follow_settle_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="ListSpanChanges holds back spans changed more recently than this: a write "
        "stamped earlier may still be committing, and a follower that passed it would skip it.",
    )
    ingest_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes that check, merge and sanitize ingested spans. 0: in the "
        "service's own process. Default: one per CPU, at most 4.",
    )

    def workers(self) -> int:
        if self.ingest_workers is not None:
            return self.ingest_workers
        return min(4, len(os.sched_getaffinity(0)))
