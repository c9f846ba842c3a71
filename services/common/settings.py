"""Settings read from the environment, with safe local defaults.

Each service subclasses ServiceSettings with its own prefix (TUNELAB_DATASETS_ ...); the few
settings every process shares keep the plain TUNELAB_ prefix.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import redact

# Read by the datasets service (which enforces it) and by the gateway (which refuses early).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024**3


# What the same setting of every service means (their defaults differ).
DATABASE_URL = (
    "The service's own database: sqlite:///PATH (the embedded default) or "
    "postgresql://USER:PASSWORD@HOST:5432/DB."
)
GRPC_ADDRESS = "Where the service serves gRPC, host:port (0.0.0.0:PORT in a container)."
METRICS_ADDRESS = "Where the service serves Prometheus metrics, host:port; empty: nowhere."


def shared(name: str) -> AliasChoices:
    """Read a field from TUNELAB_<NAME> whatever the class's own prefix is."""
    return AliasChoices(f"TUNELAB_{name.upper()}")


class CommonSettings(BaseSettings):
    """What every process reads: logging and the credential services share."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELAB_", extra="ignore", frozen=True, populate_by_name=True
    )

    log_level: str = Field(
        "INFO", validation_alias=shared("log_level"), description="DEBUG, INFO, WARNING or ERROR."
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        validation_alias=shared("log_format"),
        description="json: one object per line; text: for people. Credentials are masked in both.",
    )
    internal_token: SecretStr | None = Field(
        None,
        validation_alias=shared("internal_token"),
        description="Shared secret the gateway and services present to each other.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias=shared("public_url"),
        description="Base URL of the gateway as clients (and GPU pods) reach it.",
    )

    def require_internal_token(self) -> str:
        """The internal token, or a clear error saying how to provide one."""
        token = self.internal_token.get_secret_value() if self.internal_token else ""
        if len(token) < 32:
            raise SystemExit(
                "TUNELAB_INTERNAL_TOKEN is not set (or shorter than 32 characters): set it to a "
                "long random secret shared by the gateway and the services; `make run` creates one "
                "under var/secrets for you."
            )
        redact.register(token)
        return token
