"""What the deploy service needs from a GPU provider, and nothing more.

A provider rents one pod per deployment, named after the deployment, so that a pod is always
traceable to the run that owns it: `create` is idempotent by that name (a retry finds the pod an
earlier attempt made instead of renting another), and the supervisor's orphan sweep lists pods by
name prefix. `env` carries the run's secrets (job token, dataset URL): providers never log it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

Cloud = Literal["secure", "community"]


class PodStatus(enum.Enum):
    PROVISIONING = "provisioning"  # accepted, no machine yet
    STARTING = "starting"  # machine found, image pulling / container starting
    RUNNING = "running"
    EXITED = "exited"  # the container stopped; the pod may still exist (and bill for disk)
    FAILED = "failed"  # the provider reports an error for the pod
    TERMINATED = "terminated"  # gone for good; nothing bills


@dataclass(frozen=True)
class GpuRequest:
    type: str
    count: int = 1
    cloud: Cloud = "secure"
    spot: bool = False
    # Tried in order after `type` when a type has no capacity.
    fallback_types: tuple[str, ...] = ()
    # Spot only: the bid per GPU and hour; None bids the current spot price.
    bid_per_gpu_usd: float | None = None


@dataclass(frozen=True)
class PodSpec:
    name: str
    image: str
    gpu: GpuRequest
    command: Sequence[str]
    env: Mapping[str, str] = field(repr=False)
    disk_gb: int = 40
    # The oldest CUDA the image's framework runs on ("12.8"): hosts whose driver is older are
    # not rented, so that a GPU the image cannot use is never billed.
    min_cuda_version: str | None = None


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: PodStatus
    gpu_type: str | None = None
    gpu_count: int = 0
    # What the pod costs per hour, all GPUs together, as the provider bills it.
    hourly_usd: float = 0.0
    spot: bool = False
    exit_code: int | None = None
    message: str = ""
    # The CUDA version the host's driver reports, where the provider says.
    cuda_version: str | None = None


@dataclass(frozen=True)
class GpuType:
    id: str
    display_name: str
    memory_gb: int
    # Per GPU and hour; None where the provider offers no such capacity.
    secure_usd: float | None = None
    community_usd: float | None = None
    secure_spot_usd: float | None = None
    community_spot_usd: float | None = None
    # Whether any is free now (None: the provider does not say), and the hosts' CUDA versions.
    available: bool | None = None
    cuda_versions: tuple[str, ...] = ()

    def price(self, cloud: Cloud, spot: bool) -> float | None:
        if cloud == "secure":
            return self.secure_spot_usd if spot else self.secure_usd
        return self.community_spot_usd if spot else self.community_usd


def cuda_version(text: str) -> tuple[int, ...]:
    """ "12.8" as (12, 8), to compare versions as numbers ("12.10" is above "12.9")."""
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class ProviderErrorKind(enum.Enum):
    NO_CAPACITY = "no_capacity"  # no machine of that type now: try another type or later
    UNAUTHENTICATED = "unauthenticated"  # the API key was refused
    QUOTA = "quota"  # rate limit: try again later
    # Not enough money on the provider account: nothing will start until someone pays.
    INSUFFICIENT_BALANCE = "insufficient_balance"
    # The account may not use what was asked for (a GPU pool, an action of the key).
    NOT_ALLOWED = "not_allowed"
    INVALID = "invalid"  # the provider refused the request as malformed
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"  # provider down, timed out, or answered 5xx past our retries


class ProviderError(Exception):
    """A provider's refusal, classified; the message is safe to show a user (no secrets)."""

    def __init__(
        self, kind: ProviderErrorKind, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    async def create(self, spec: PodSpec) -> Pod:
        """Rent a pod, or return the one already named `spec.name` (never a second one)."""
        ...

    async def get(self, pod_id: str) -> Pod | None:
        """The pod now, or None when the provider no longer knows it."""
        ...

    async def list_pods(self, name_prefix: str) -> list[Pod]:
        """Every live pod whose name starts with `name_prefix`."""
        ...

    async def terminate(self, pod_id: str) -> None:
        """Stop billing for good. Idempotent: a pod already gone is success."""
        ...

    async def gpu_types(self, count: int = 1, cloud: Cloud = "secure") -> list[GpuType]:
        """The catalogue with current prices (per GPU) and, where the provider says, whether
        a pod of `count` GPUs in `cloud` would find a free machine now."""
        ...

    async def billed_usd(self, pod_id: str, since: datetime) -> float | None:
        """What the provider has billed for the pod since `since`; None where it does not say."""
        ...

    async def log_tail(self, pod_id: str, lines: int) -> list[str]:
        """The last lines the pod's container printed, as the provider keeps them (may hold
        secrets: callers sanitize); [] where it keeps none."""
        ...

    async def aclose(self) -> None: ...
