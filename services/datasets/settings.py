"""Settings of the datasets service (environment variables TUNELAB_DATASETS_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import DEFAULT_MAX_UPLOAD_BYTES, CommonSettings

MAX_TOKEN_TTL_SECONDS = 2 * 60 * 60
MAX_TOKEN_USES = 1000


class DatasetsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_DATASETS_", extra="ignore", frozen=True)

    database_url: str = "sqlite:///var/datasets.db"
    storage_dir: Path = Path("var/datasets")
    grpc_address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9151"
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
    stale_upload_hours: float = Field(
        24.0,
        gt=0,
        description="What a crash left of uploads (partial files, blobs no dataset names) is "
        "removed after this long.",
    )
