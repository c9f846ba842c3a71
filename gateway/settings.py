"""Settings of the gateway (environment variables TUNELAB_GATEWAY_*, and a few shared ones)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.client import DEFAULT_TIMEOUT_SECONDS, READY_WAIT_SECONDS
from services.common.settings import DEFAULT_MAX_UPLOAD_BYTES, CommonSettings, shared


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_GATEWAY_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="The address the gateway listens on.")
    port: int = Field(8080, description="Its port.")
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
    eval_address: str = Field(
        "127.0.0.1:50054",
        validation_alias=AliasChoices("TUNELAB_GATEWAY_EVAL_ADDRESS", "TUNELAB_EVAL_GRPC_ADDRESS"),
    )
    deploy_address: str = Field(
        "127.0.0.1:50052",
        validation_alias=AliasChoices(
            "TUNELAB_GATEWAY_DEPLOY_ADDRESS", "TUNELAB_DEPLOY_GRPC_ADDRESS"
        ),
    )
    jwt_secret: SecretStr | None = Field(
        None, validation_alias=shared("jwt_secret"), description="HS256 key (development)."
    )
    jwks_url: str | None = Field(
        None, validation_alias=shared("jwks_url"), description="JWKS of the identity provider."
    )
    jwt_issuer: str | None = Field(None, validation_alias=shared("jwt_issuer"))
    jwt_audience: str | None = Field(None, validation_alias=shared("jwt_audience"))
    # Deadlines of the calls to the services: short for unary calls, sized to the stream for
    # streams (a stream never inherits the unary one).
    call_timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS, gt=0, description="Deadline of a unary call to a service."
    )
    evaluate_timeout_seconds: float = Field(
        150.0,
        gt=0,
        description="Deadline of an evaluation, which may wait for an LLM judge (its calls "
        "time out on their own first, see TUNELAB_EVAL_JUDGE_TIMEOUT_SECONDS).",
    )
    ready_wait_seconds: float = Field(
        READY_WAIT_SECONDS,
        ge=0,
        description="How long a call waits for a service that is (re)starting before it is "
        "answered 503.",
    )
    watch_timeout_seconds: float = Field(
        3660,
        gt=0,
        description="Deadline of a watch stream: a little past the deploy service's own limit "
        "(TUNELAB_DEPLOY_WATCH_MAX_SECONDS), which ends a watch cleanly first.",
    )
    export_timeout_seconds: float = Field(6 * 3600, gt=0, description="Deadline of an export.")
    upload_timeout_seconds: float = Field(6 * 3600, gt=0)
    # Abuse limits (gateway/limits.py), per gateway process; 429 with Retry-After past them.
    public_rate_limit: str = Field(
        "600/minute",
        description="Requests per client address and route on the routes with no login "
        "(downloads by token, the pod's reports and output): a pod reports every few seconds, "
        "and many pods may share an address.",
    )
    public_refused_rate_limit: str = Field(
        "30/minute",
        description="Refused requests (401, 403, 404) per client address on those routes, "
        "all together: a valid token is never refused, a guessed one is.",
    )
    user_rate_limit: str = Field(
        "60/minute",
        description="Requests per user and route on the expensive routes (exports, "
        "analytics, watches): a dashboard refreshing its charts every few seconds stays under.",
    )
    max_streams_per_user: int = Field(
        8, ge=1, description="Streams (watches, exports, output downloads) a user holds open."
    )
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
    download_buffer_bytes: int = Field(
        1 << 20,
        ge=64 * 1024,
        le=64 * 1024**2,
        description="A download's receive buffer: up to this much is read from the source "
        "at once, and up to twice it is held per download while the client catches up.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins allowed to call the API, as JSON: ["https://app.example"].',
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-For is believed (uvicorn's setting)."
    )
    # The HTTP server's own limits (gateway/server.py), set deliberately rather than left to
    # uvicorn's defaults.
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request's headers must arrive within this long (408 otherwise): a slow "
        "client cannot hold a connection by trickling them. Ten seconds is ample for any real "
        "client and keeps a slowloris connection short.",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="Longest request head (line and headers): 431 past it."
    )
    max_connections: int = Field(
        1000,
        ge=16,
        description="Connections and requests in progress at once; past it, 503 (uvicorn's "
        "limit_concurrency). Kept under the open-file limit, which a container often sets "
        "to 1024.",
    )
    keep_alive_seconds: int = Field(
        75,
        ge=1,
        description="An idle kept-alive connection is closed after this long. Longer than "
        "clients' own idle timeouts (httpx and most pools: 5 s; load balancers: 60 s), so that "
        "the client always lets go first: at uvicorn's 5 s both sides let go together, and a "
        "request sent just as the server closes fails (seen under load). nginx's default.",
    )
    backlog: int = Field(
        2048, ge=64, description="Connections the kernel queues before they are accepted."
    )
