"""A deployment request, checked field by field and with its defaults applied.

What is wrong with the request itself (a negative epoch count, an unknown provider) is
INVALID_ARGUMENT naming the field; whether the world allows it (the dataset's format, the key,
the price) is for the pre-flight checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from services.common.errors import invalid_argument
from services.deploy.providers.base import Cloud, GpuRequest
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb
from tunelab_trainer.common import (
    TINY_DEFAULTS,
    TRL_DEFAULTS,
    HyperparameterError,
    Hyperparameters,
    parse_hyperparameters,
)

PROVIDERS = ("local", "container", "runpod")
# Providers that run pods on this host: no key, no GPU catalogue, no price.
ON_THIS_HOST = ("local", "container")
LOCAL_MODEL = "tiny"
MAX_RUNTIME_MINUTES = 7 * 24 * 60
MAX_GPUS = 8
# A Hugging Face model id: owner/name, or a bare name.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_GPU_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,127}")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,255}")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class Spec:
    provider: str
    dataset_id: str
    method: str  # sft | dpo
    base_model: str
    hyperparameters: Hyperparameters
    gpu: GpuRequest
    max_runtime_minutes: int
    max_cost_usd: float
    heartbeat_timeout_minutes: int
    image: str

    @property
    def trainer(self) -> str:
        """Which trainer the pod runs: the tiny one (numpy, CPU) or TRL's (torch, GPUs)."""
        return "tiny" if self.provider != "runpod" and self.base_model == LOCAL_MODEL else "trl"

    def digest(self) -> str:
        """Identifies the request, for refusing an idempotency key reused with another one."""
        canonical = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse(
    message: api.DeploymentSpec,
    *,
    default_image: str,
    container_image: str = "localhost/tunelab/trainer:latest",
) -> Spec:
    """`default_image`: a RunPod pod's, and a GPU container pod's; `container_image`: a
    container pod's that trains the tiny model."""
    provider = message.provider or "local"
    if provider not in PROVIDERS:
        raise invalid_argument(
            "deployment.provider",
            f"provider must be one of {', '.join(PROVIDERS)}; got {_show(provider)}",
        )
    if not message.dataset_id:
        raise invalid_argument("deployment.dataset_id", "dataset_id is required")
    if len(message.dataset_id) > 40:
        raise invalid_argument("deployment.dataset_id", "dataset_id is not a dataset id")
    if message.method == pb.TRAINING_METHOD_UNSPECIFIED:
        raise invalid_argument("deployment.method", "method is required: sft or dpo")
    method = pb.TrainingMethod.Name(message.method).removeprefix("TRAINING_METHOD_").lower()
    base_model = message.base_model or (LOCAL_MODEL if provider in ON_THIS_HOST else "")
    if not base_model:
        raise invalid_argument(
            "deployment.base_model",
            "base_model is required for runpod: a Hugging Face model id such as "
            "Qwen/Qwen2.5-0.5B-Instruct",
        )
    if not _MODEL_ID.fullmatch(base_model):
        raise invalid_argument(
            "deployment.base_model",
            f"base_model {_show(base_model)} is not a model id (owner/name, letters, digits, "
            "'.', '_' and '-')",
        )
    tiny = provider != "runpod" and base_model == LOCAL_MODEL
    image = message.image or (
        container_image if tiny and provider == "container" else default_image
    )
    if message.image and provider == "local":
        raise invalid_argument("deployment.image", "the local provider runs no image; drop it")
    if not _IMAGE.fullmatch(image):
        raise invalid_argument("deployment.image", f"image {_show(image)} is not an image name")
    return Spec(
        provider=provider,
        dataset_id=message.dataset_id,
        method=method,
        base_model=base_model,
        hyperparameters=_hyperparameters(message.hyperparameters, tiny),
        gpu=_container_gpu(message.gpu, tiny)
        if provider == "container"
        else _gpu(message.gpu, provider),
        image=image if provider != "local" else "local",
        **_limits(message.limits),
    )


def _hyperparameters(h: pb.Hyperparameters, tiny: bool) -> Hyperparameters:
    """The values set, checked as the trainer checks them, and the trainer's defaults for the
    rest (proto3's 0 is "not set": each field's 0 is its default or outside its range)."""
    defaults = TINY_DEFAULTS if tiny else TRL_DEFAULTS
    given = {f.name: getattr(h, f.name) for f in fields(Hyperparameters) if getattr(h, f.name)}
    try:
        return parse_hyperparameters(given, defaults)
    except HyperparameterError as exc:
        raise invalid_argument(f"deployment.hyperparameters.{exc.name}", str(exc)) from None


def _container_gpu(gpu: pb.GpuSpec, tiny: bool) -> GpuRequest:
    """A container pod gets `count` of the host's GPUs; the rest of a GpuSpec is RunPod's."""
    for name, given in (
        ("type", gpu.type),
        ("fallback_types", gpu.fallback_types),
        ("spot", gpu.spot),
        ("bid_per_gpu_usd", gpu.bid_per_gpu_usd),
        ("cloud", gpu.cloud),
    ):
        if given:
            raise invalid_argument(
                f"deployment.gpu.{name}",
                f"gpu.{name} is for runpod: a container pod gets the host's GPUs, by gpu.count",
            )
    if tiny and gpu.count:
        raise invalid_argument(
            "deployment.gpu.count",
            f"the {LOCAL_MODEL!r} model trains on the CPU: drop gpu.count, or name a "
            "base_model to train on the host's GPUs",
        )
    if not tiny and not 1 <= gpu.count <= MAX_GPUS:
        raise invalid_argument(
            "deployment.gpu.count",
            f"a base model trains on GPUs: set gpu.count, 1 to {MAX_GPUS}, to the host's GPUs "
            f"the container gets (or use base_model {LOCAL_MODEL!r} on the CPU)",
        )
    return GpuRequest(type="host GPU" if gpu.count else "cpu", count=gpu.count)


def _gpu(gpu: pb.GpuSpec, provider: str) -> GpuRequest:
    if provider == "local":
        return GpuRequest(type="cpu", count=0)
    if not gpu.type:
        raise invalid_argument(
            "deployment.gpu.type",
            "gpu.type is required for runpod: a GPU type id from GET /v1/gpu-types, such as "
            "'NVIDIA RTX A4000'",
        )
    for index, name in enumerate([gpu.type, *gpu.fallback_types]):
        if not _GPU_TYPE.fullmatch(name):
            where = "type" if index == 0 else f"fallback_types[{index - 1}]"
            raise invalid_argument(
                f"deployment.gpu.{where}", f"gpu.{where} {_show(name)} is not a GPU type id"
            )
    if len(gpu.fallback_types) > 8:
        raise invalid_argument("deployment.gpu.fallback_types", "at most 8 fallback types")
    if not 0 <= gpu.count <= MAX_GPUS:
        raise invalid_argument(
            "deployment.gpu.count",
            f"gpu.count must be a whole number from 1 to {MAX_GPUS} (0 or unset means 1); "
            f"got {gpu.count}",
        )
    if gpu.bid_per_gpu_usd < 0 or gpu.bid_per_gpu_usd != gpu.bid_per_gpu_usd:
        raise invalid_argument("deployment.gpu.bid_per_gpu_usd", "the bid must be 0 or more")
    if gpu.bid_per_gpu_usd and not gpu.spot:
        raise invalid_argument(
            "deployment.gpu.bid_per_gpu_usd", "a bid is for spot capacity only: set gpu.spot"
        )
    cloud: Cloud = "community" if gpu.cloud == pb.CLOUD_COMMUNITY else "secure"
    return GpuRequest(
        type=gpu.type,
        count=gpu.count or 1,
        cloud=cloud,
        spot=gpu.spot,
        fallback_types=tuple(t for t in gpu.fallback_types if t != gpu.type),
        bid_per_gpu_usd=gpu.bid_per_gpu_usd or None,
    )


def _limits(limits: pb.Limits) -> dict[str, Any]:
    if not 1 <= limits.max_runtime_minutes <= MAX_RUNTIME_MINUTES:
        raise invalid_argument(
            "deployment.limits.max_runtime_minutes",
            f"limits.max_runtime_minutes is required, 1 to {MAX_RUNTIME_MINUTES}: the pod is "
            "terminated after it",
        )
    cost = limits.max_cost_usd
    if not cost > 0 or cost == float("inf"):
        raise invalid_argument(
            "deployment.limits.max_cost_usd",
            "limits.max_cost_usd is required and above 0: the pod is terminated when the run "
            "has cost that much",
        )
    heartbeat = limits.heartbeat_timeout_minutes or 10
    if not 3 <= heartbeat <= 120:
        raise invalid_argument(
            "deployment.limits.heartbeat_timeout_minutes",
            "limits.heartbeat_timeout_minutes must be between 3 and 120 (pods report every "
            "minute at least)",
        )
    return {
        "max_runtime_minutes": limits.max_runtime_minutes,
        "max_cost_usd": cost,
        "heartbeat_timeout_minutes": heartbeat,
    }


def check_request_id(request_id: str) -> str | None:
    if not request_id:
        return None
    if not _REQUEST_ID.fullmatch(request_id):
        raise invalid_argument(
            "request_id",
            "request_id (the Idempotency-Key header) must be 1 to 128 printable ASCII characters",
        )
    return request_id


def _show(value: str) -> str:
    """A caller's value, quoted and cut short, safe to echo in a message."""
    shown = value if len(value) <= 60 else value[:57] + "..."
    return repr(shown)
