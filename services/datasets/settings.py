"""Settings of the datasets service (environment variables TUNELAB_DATASETS_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.blobstore.settings import StorageSettings
from services.common.settings import (
    DATABASE_URL,
    DEFAULT_MAX_UPLOAD_BYTES,
    GRPC_ADDRESS,
    METRICS_ADDRESS,
    CommonSettings,
)

MAX_TOKEN_TTL_SECONDS = 2 * 60 * 60
MAX_TOKEN_USES = 1000


class DatasetsSettings(CommonSettings, StorageSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_DATASETS_", extra="ignore", frozen=True)

    database_url: str = Field("sqlite:///var/datasets.db", description=DATABASE_URL)
    storage_dir: Path = Field(Path("var/datasets"), description="Local storage's directory.")
    blob_http_address: str = Field(
        "127.0.0.1:50061",
        description="Local storage: where this service serves the gateway signed blob URLs, "
        "as object storage would (port 0 picks a free one).",
    )
    blob_http_url: str = Field(
        "",
        description="Local storage: how the gateway reaches blob_http_address (e.g. "
        "http://datasets:50061 on Kubernetes); empty: http://<the address it listens on>.",
    )
    source_url_seconds: int = Field(
        300,
        ge=10,
        le=3600,
        description="How long the URL the gateway fetches a download's bytes from stays valid "
        "(the fetch must start within it; a long download may run on).",
    )
    grpc_address: str = Field("127.0.0.1:50051", description=GRPC_ADDRESS)
    metrics_address: str = Field("127.0.0.1:9151", description=METRICS_ADDRESS)
    max_upload_bytes: int = Field(
        DEFAULT_MAX_UPLOAD_BYTES, gt=0, description="Largest file accepted."
    )
    max_line_bytes: int = Field(
        16 * 1024**2, gt=0, description="Longest row; a longer one makes the file invalid."
    )
    purge_interval_seconds: float = Field(300.0, gt=0)
    expired_token_grace_hours: float = Field(
        24.0,
        ge=0,
        description="Expired tokens are kept this long (refused as expired, not as "
        "unknown), then purged.",
    )
    audit_retention_days: float = Field(
        180.0, gt=0, description="Download audit records older than this are deleted."
    )
    reconcile_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="How often storage is walked against the records (blobs no dataset names "
        "are removed, datasets whose blob is missing reported); each pass lists the store.",
    )
    stale_upload_hours: float = Field(
        24.0,
        gt=0,
        description="What a crash left of uploads (partial files, blobs no dataset names) is "
        "removed after this long.",
    )
