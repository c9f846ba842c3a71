"""Settings of the gateway (environment variables TUNELAB_GATEWAY_*, and a few shared ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import DEFAULT_MAX_UPLOAD_BYTES, CommonSettings, shared


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    datasets_address: str = Field(
        "127.0.0.1:50051",
        validation_alias=AliasChoices(
            "TUNELAB_GATEWAY_DATASETS_ADDRESS", "TUNELAB_DATASETS_GRPC_ADDRESS"
        ),
    )
    tracing_address: str = Field(
        "127.0.0.1:50053",
        validation_alias=AliasChoices(
            "TUNELAB_GATEWAY_TRACING_ADDRESS", "TUNELAB_TRACING_GRPC_ADDRESS"
        ),
    )
    deploy_address: str = Field(
        "127.0.0.1:50052",
        validation_alias=AliasChoices(
            "TUNELAB_GATEWAY_DEPLOY_ADDRESS", "TUNELAB_DEPLOY_GRPC_ADDRESS"
        ),
    )
    # The datasets service's blob store, read-only here: downloads stream straight from it.
    datasets_storage_dir: Path = Field(
        Path("var/datasets"), validation_alias=shared("datasets_storage_dir")
    )
    jwt_secret: SecretStr | None = Field(
        None, validation_alias=shared("jwt_secret"), description="HS256 key (development)."
    )
    jwks_url: str | None = Field(
        None, validation_alias=shared("jwks_url"), description="JWKS of the identity provider."
    )
    jwt_issuer: str | None = Field(None, validation_alias=shared("jwt_issuer"))
    jwt_audience: str | None = Field(None, validation_alias=shared("jwt_audience"))
    upload_timeout_seconds: float = Field(6 * 3600, gt=0)
    max_upload_bytes: int = Field(
        DEFAULT_MAX_UPLOAD_BYTES,
        gt=0,
        validation_alias=shared("datasets_max_upload_bytes"),
        description="The datasets service's limit, checked here too so that an oversized body "
        "is refused before it is sent on.",
    )
    max_output_bytes: int = Field(
        50 * 1024**3,
        gt=0,
        validation_alias=shared("deploy_max_output_bytes"),
        description="The deploy service's limit on a run's output, checked here too.",
    )
    download_chunk_bytes: int = Field(1 << 20, ge=4096)
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins allowed to call the API, as JSON: ["https://app.example"].',
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-For is believed (uvicorn's setting)."
    )
