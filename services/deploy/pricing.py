"""GPU types and their prices, from the provider's catalogue with the caller's own key."""

from __future__ import annotations

import grpc

from services.common.errors import ServiceError, invalid_argument
from services.deploy.providers.base import ProviderError, ProviderErrorKind
from services.deploy.providers.registry import Providers
from services.deploy.spec import MAX_GPUS, ON_THIS_HOST
from tunelab.common.v1 import errors_pb2
from tunelab.deploy.v1 import deployments_pb2 as pb


async def gpu_types(
    providers: Providers, owner: str, provider: str, gpu_count: int
) -> list[pb.GpuType]:
    """The provider's GPU types, priced for `gpu_count` GPUs (0: one); none for the providers
    on this host."""
    provider = provider or "runpod"
    if provider in ON_THIS_HOST:
        return []
    if provider != "runpod":
        raise invalid_argument(
            "provider", "GPU types come from provider runpod (or local, container: none)"
        )
    if not 0 <= gpu_count <= MAX_GPUS:
        raise invalid_argument(
            "gpu_count",
            f"gpu_count must be a whole number from 1 to {MAX_GPUS} (0 or unset means 1); "
            f"got {gpu_count}",
        )
    try:
        async with providers.open(owner, provider) as client:
            found = await client.gpu_types(gpu_count or 1)
    except ProviderError as exc:
        raise provider_error(exc) from None
    count = gpu_count or 1
    return [
        pb.GpuType(
            id=g.id,
            display_name=g.display_name,
            memory_gb=g.memory_gb,
            secure_usd=(g.secure_usd or 0) * count,
            community_usd=(g.community_usd or 0) * count,
            secure_spot_usd=(g.secure_spot_usd or 0) * count,
            community_spot_usd=(g.community_spot_usd or 0) * count,
            available=g.available,
            cuda_versions=g.cuda_versions,
        )
        for g in found
    ]


def provider_error(exc: ProviderError) -> ServiceError:
    """The status a caller gets when the provider refused or failed a request."""
    if exc.kind is ProviderErrorKind.UNAUTHENTICATED:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            exc.message,
            errors_pb2.ERROR_REASON_PROVIDER_KEY_MISSING,
        )
    if exc.kind is ProviderErrorKind.QUOTA:
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
    if exc.kind is ProviderErrorKind.NOT_ALLOWED:
        return ServiceError(grpc.StatusCode.PERMISSION_DENIED, exc.message)
    if exc.kind is ProviderErrorKind.INSUFFICIENT_BALANCE:
        return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, exc.message, errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE
    )
