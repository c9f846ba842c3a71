"""Settings of the eval service (environment variables TUNELAB_EVAL_*)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common import egress
from services.common.settings import (
    DATABASE_URL,
    GRPC_ADDRESS,
    METRICS_ADDRESS,
    CommonSettings,
    shared,
)


class EvalSettings(CommonSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNELAB_EVAL_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field("sqlite:///var/eval.db", description=DATABASE_URL)
    grpc_address: str = Field("127.0.0.1:50054", description=GRPC_ADDRESS)
    metrics_address: str = Field("127.0.0.1:9154", description=METRICS_ADDRESS)
    tracing_address: str = Field(
        "127.0.0.1:50053",
        validation_alias=shared("tracing_grpc_address"),
        description="Where the tracing service listens: the traces judged are read, and the "
        "scores written back, through its gRPC contract.",
    )
    datasets_address: str = Field(
        "127.0.0.1:50051",
        validation_alias=shared("datasets_grpc_address"),
        description="Where the datasets service listens: curated datasets are stored through "
        "its gRPC contract.",
    )
    curation_upload_timeout_seconds: float = Field(
        3600.0, gt=0, description="How long writing one curated dataset may take."
    )
    keys_kek: SecretStr | None = Field(
        None,
        description="Key-encryption keys for stored judge keys: comma-separated Fernet keys, "
        "the first encrypts, all decrypt.",
    )
    judge_base_url: str = Field(
        "",
        description="The operator's judge (an OpenAI-compatible base URL, e.g. "
        "https://api.openai.com/v1), used when an evaluation names no base_url. Trusted: its "
        "address is not checked.",
    )
    judge_model: str = Field("", description="The operator judge's model.")
    judge_api_key: SecretStr | None = Field(None, description="The operator judge's key.")
    judge_allow_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR or addresses) a user's judge URL may reach "
        "although they are not public (an internal model server). Empty: public addresses only.",
    )
    judge_timeout_seconds: float = Field(
        60.0, gt=0, le=600, description="How long one judge call may take, retries included."
    )
    judge_max_attempts: int = Field(4, ge=1, le=10)
    judge_concurrency: int = Field(
        8, ge=1, le=256, description="Calls in flight at once to one judge endpoint and model."
    )
    follow_interval_seconds: float = Field(
        2.0, gt=0, description="How often the rules look for new spans when caught up."
    )
    rule_concurrency: int = Field(
        8, ge=1, le=256, description="Spans a rule or a job judges at once."
    )
    housekeeping_interval_seconds: float = Field(
        300.0,
        gt=0,
        description="How often judgments whose score did not reach the trace are written "
        "again, and judgments of deleted traces are flagged.",
    )

    @field_validator("judge_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        try:
            egress.parse_allowlist(value.split(","))
        except ValueError as exc:
            raise ValueError(f"not a network: {exc}") from None
        return value

    @property
    def has_operator_judge(self) -> bool:
        """Whether evaluations may leave out the judge's base URL."""
        return bool(self.judge_base_url and self.judge_model)

    def allowlist(self) -> tuple[egress.IPNetwork, ...]:
        return egress.parse_allowlist(self.judge_allow_networks.split(","))
