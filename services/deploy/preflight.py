"""The pre-flight checks: everything that can be known before money is spent, each with a
plain message. All of them run, so the caller sees every problem at once, not one per try.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from services.deploy.checks import Check, Status
from services.deploy.container_checks import container_checks
from services.deploy.datasets import DatasetFacts, DatasetsClient, describe
from services.deploy.pod import stack
from services.deploy.providers.base import GpuType, ProviderError, cuda_version
from services.deploy.providers.registry import HUGGING_FACE, NO_KEY, Providers
from services.deploy.spec import LOCAL_MODEL, Spec
from tunelab.datasets.v1 import datasets_pb2 as ds

# Fewer minutes than this before the cost limit stops the run is a mistake, not a plan.
MIN_USEFUL_MINUTES = 10.0

_FITS = {
    "sft": {ds.DATASET_FORMAT_SFT_CHAT, ds.DATASET_FORMAT_TEXT},
    "dpo": {ds.DATASET_FORMAT_DPO_PREFERENCE},
}
_FORMAT_FIELDS = {
    ds.DATASET_FORMAT_SFT_CHAT: ("SFT chat", {"messages"}),
    ds.DATASET_FORMAT_TEXT: ("plain text", {"text"}),
    ds.DATASET_FORMAT_DPO_PREFERENCE: ("DPO preference pairs", {"prompt", "chosen", "rejected"}),
}
_METHOD_FIELDS = {"sft": ("messages", "text"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass(frozen=True)
class Estimate:
    hourly_usd: float
    max_total_usd: float
    max_minutes: float
    gpu_type: str


@dataclass(frozen=True)
class Outcome:
    checks: list[Check]
    estimate: Estimate
    dataset: DatasetFacts | None

    @property
    def ok(self) -> bool:
        return all(check.status is not Status.FAIL for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.FAIL]


def _pinned_cuda_floor(image: str) -> str | None:
    return stack.CUDA_VERSION if image == stack.IMAGE else None


class Preflight:
    def __init__(
        self,
        datasets: DatasetsClient,
        providers: Providers,
        *,
        public_url: str,
        local_api_url: str = "",
        container_api_url: str = "",
        max_cost_per_run_usd: float,
        cuda_floor: Callable[[str], str | None] = _pinned_cuda_floor,
    ) -> None:
        self.container_api_url = container_api_url
        self.datasets = datasets
        self.providers = providers
        self.public_url = public_url
        self.local_api_url = local_api_url or public_url
        self.max_cost_per_run_usd = max_cost_per_run_usd
        # The host CUDA a pod of an image needs (DeploySettings.cuda_floor; launch.py asks it).
        self.cuda_floor = cuda_floor

    async def run(self, owner: str, spec: Spec) -> Outcome:
        dataset_checks, dataset = await self._dataset(owner, spec)
        provider_checks, hourly = await self._provider(owner, spec)
        checks = [
            *dataset_checks,
            self._model(spec),
            *_image_check(spec),
            *provider_checks,
            await self._callback(spec),
        ]
        estimate = _estimate(spec, hourly)
        checks.extend(self._cost(spec, estimate, priced=hourly is not None))
        return Outcome(checks, estimate, dataset)

    async def _dataset(self, owner: str, spec: Spec) -> tuple[list[Check], DatasetFacts | None]:
        try:
            dataset = await self.datasets.get(owner, spec.dataset_id)
        except grpc.aio.AioRpcError as exc:
            message = f"the datasets service could not be asked ({describe(exc)}); retry"
            transient = exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            return [Check("dataset", Status.FAIL, message, transient)], None
        if dataset is None:
            message = (
                f"dataset {spec.dataset_id} does not exist or is not yours: "
                "GET /v1/datasets lists yours"
            )
            return [
                Check("dataset", Status.FAIL, message),
                Check("dataset_format", Status.FAIL, "no dataset to check"),
            ], None
        found = Check(
            "dataset",
            Status.PASS,
            f"{dataset.name}: {dataset.row_count} rows, {dataset.size_bytes} bytes",
        )
        return [found, _format_check(spec.method, dataset)], dataset

    def _model(self, spec: Spec) -> Check:
        if spec.provider == "local" and spec.base_model != LOCAL_MODEL:
            return Check(
                "base_model",
                Status.FAIL,
                f"the local provider trains only the built-in {LOCAL_MODEL!r} model on the CPU; "
                f"use base_model {LOCAL_MODEL!r}, or provider runpod for {spec.base_model}",
            )
        return Check("base_model", Status.PASS, f"base model {spec.base_model}")

    async def _provider(self, owner: str, spec: Spec) -> tuple[list[Check], float | None]:
        """The key and GPU checks, and the pod's hourly price (None when it cannot be known)."""
        if spec.provider == "local":
            return [
                Check("provider_key", Status.PASS, "the local provider needs no key"),
                Check("gpu_type", Status.PASS, "the local provider trains on this machine's CPU"),
            ], 0.0
        if spec.provider == "container":
            return await self._container(owner, spec), 0.0
        if not await self.providers.has_key(owner, spec.provider):
            return [
                Check("provider_key", Status.FAIL, NO_KEY),
                Check("gpu_type", Status.FAIL, "GPU types and prices need your RunPod key"),
            ], None
        try:
            async with self.providers.open(owner, spec.provider) as provider:
                offered = await provider.gpu_types(spec.gpu.count, spec.gpu.cloud)
                catalogue = {gpu.id: gpu for gpu in offered}
        except ProviderError as exc:
            return [
                Check("provider_key", Status.FAIL, f"RunPod refused the catalogue: {exc.message}"),
                Check("gpu_type", Status.FAIL, "the GPU catalogue could not be read"),
            ], None
        key = Check("provider_key", Status.PASS, "a RunPod key is set and RunPod accepts it")
        gpu, price = _gpu_check(spec, catalogue)
        floor = self.cuda_floor(spec.image)
        hosts = _hosts_check(spec, catalogue, floor)
        spot = _spot_check(spec, floor)
        return [key, gpu, *hosts, *spot, await self._hf_token(owner)], price

    async def _container(self, owner: str, spec: Spec) -> list[Check]:
        where = f"{spec.gpu.count} of this host's GPUs" if spec.gpu.count else "this host's CPU"
        checks = [
            Check("provider_key", Status.PASS, "the container provider needs no key"),
            Check("gpu_type", Status.PASS, f"the container trains on {where}"),
        ]
        if self.providers.container is None:
            return [*checks, Check("container_api", Status.FAIL, "no container provider here")]
        checks.extend(await container_checks(self.providers.container, spec))
        if spec.trainer != "tiny":
            checks.append(await self._hf_token(owner))
        return checks

    async def _hf_token(self, owner: str) -> Check:
        if await self.providers.has_key(owner, HUGGING_FACE):
            return Check("huggingface_token", Status.PASS, "pods get your Hugging Face token")
        return Check(
            "huggingface_token",
            Status.WARN,
            "no Hugging Face token: a gated base model (Llama, Gemma ...) will fail to download; "
            "set one with PUT /v1/provider-keys/huggingface if yours is gated",
        )

    async def _callback(self, spec: Spec) -> Check:
        url = urlsplit(self.public_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            return Check(
                "callback_url", Status.FAIL, f"TUNELAB_PUBLIC_URL {self.public_url!r} is not a URL"
            )
        if spec.provider == "local":
            return Check(
                "callback_url", Status.PASS, f"local pods reach the gateway at {self.local_api_url}"
            )
        if spec.provider == "container":
            return Check(
                "callback_url",
                Status.PASS,
                f"container pods reach the gateway at {self.container_api_url}",
            )
        problem = await _unreachable_from_outside(url.hostname)
        if problem:
            return Check(
                "callback_url",
                Status.FAIL,
                f"pods must reach the gateway to download the dataset and report, but "
                f"TUNELAB_PUBLIC_URL is {self.public_url} and {problem}: set it to the gateway's "
                "public address (an ingress or a tunnel)",
            )
        if url.scheme != "https":
            return Check(
                "callback_url",
                Status.WARN,
                f"{self.public_url} is plain http: the pod's tokens cross the internet unencrypted",
            )
        return Check("callback_url", Status.PASS, f"pods reach the gateway at {self.public_url}")

    def _cost(self, spec: Spec, estimate: Estimate, *, priced: bool) -> list[Check]:
        checks = []
        if spec.max_cost_usd > self.max_cost_per_run_usd:
            checks.append(
                Check(
                    "limits",
                    Status.FAIL,
                    f"max_cost_usd {spec.max_cost_usd:g} is above this installation's limit of "
                    f"{self.max_cost_per_run_usd:g} per run",
                )
            )
        else:
            checks.append(
                Check(
                    "limits",
                    Status.PASS,
                    f"stopped after {spec.max_runtime_minutes} minutes or "
                    f"${spec.max_cost_usd:g}, or {spec.heartbeat_timeout_minutes} minutes "
                    "without a report",
                )
            )
        if not priced:
            checks.append(Check("cost", Status.FAIL, "no price is known for the GPU asked for"))
        elif estimate.hourly_usd == 0:
            checks.append(Check("cost", Status.PASS, "free: the run uses this machine"))
        elif estimate.max_minutes < MIN_USEFUL_MINUTES:
            checks.append(
                Check(
                    "cost",
                    Status.FAIL,
                    f"max_cost_usd {spec.max_cost_usd:g} buys {estimate.max_minutes:.1f} minutes "
                    f"of {estimate.gpu_type} at ${estimate.hourly_usd:.2f}/h; raise it to at "
                    f"least {estimate.hourly_usd * MIN_USEFUL_MINUTES / 60:.2f}",
                )
            )
        elif estimate.max_minutes < spec.max_runtime_minutes:
            checks.append(
                Check(
                    "cost",
                    Status.WARN,
                    f"at ${estimate.hourly_usd:.2f}/h the cost limit stops the run after "
                    f"{estimate.max_minutes:.0f} of its {spec.max_runtime_minutes} minutes",
                )
            )
        else:
            checks.append(
                Check(
                    "cost",
                    Status.PASS,
                    f"${estimate.hourly_usd:.2f}/h; at most ${estimate.max_total_usd:.2f}",
                )
            )
        return checks


def _format_check(method: str, dataset: DatasetFacts) -> Check:
    if dataset.format == ds.DATASET_FORMAT_INVALID:
        return Check(
            "dataset_format",
            Status.FAIL,
            f"{dataset.name} is not usable for training ({dataset.format_error}); fix the file "
            "and upload it again",
        )
    label, fields = _FORMAT_FIELDS.get(dataset.format, ("unknown", set()))
    if dataset.format in _FITS[method]:
        return Check("dataset_format", Status.PASS, f"{label} rows suit method {method}")
    fitting = next(m for m, formats in _FITS.items() if dataset.format in formats)
    wanted = _METHOD_FIELDS[method]
    missing = [name for name in wanted if name not in fields]
    needs = " or ".join(wanted) if method == "sft" else ", ".join(wanted)
    return Check(
        "dataset_format",
        Status.FAIL,
        f"method {method} needs rows with {needs}, but {dataset.name} holds {label} (rows with "
        f"{', '.join(sorted(fields))}; missing {', '.join(missing)}): use method {fitting} for "
        f"this dataset, or upload a dataset in the {method} format",
    )


def _image_check(spec: Spec) -> list[Check]:
    """The pod's packages are pinned for one image (pod/stack.py): another is allowed, but
    untested with them."""
    if spec.trainer == "tiny":
        return []  # local runs no image; a tiny container's image is checked on its host
    pinned = (
        f"Python {stack.PYTHON_VERSION}, torch {stack.TORCH_VERSION}, CUDA {stack.CUDA_VERSION}"
    )
    if spec.image == stack.IMAGE:
        return [Check("image", Status.PASS, f"{spec.image}: the tested image ({pinned})")]
    return [
        Check(
            "image",
            Status.WARN,
            f"image {spec.image} is untested with the pod's pinned packages (tested: "
            f"{stack.IMAGE}, {pinned}): the pod fails before it downloads anything if its "
            f"torch is not {stack.TORCH_VERSION}, and may fail later if the rest differs",
        )
    ]


def _gpu_check(spec: Spec, catalogue: dict[str, GpuType]) -> tuple[Check, float | None]:
    kind = ("community" if spec.gpu.cloud == "community" else "secure") + (
        " spot" if spec.gpu.spot else ""
    )
    unknown = [t for t in (spec.gpu.type, *spec.gpu.fallback_types) if t not in catalogue]
    if unknown:
        return Check(
            "gpu_type",
            Status.FAIL,
            f"RunPod has no GPU type {', '.join(map(repr, unknown))}: GET /v1/gpu-types lists "
            "them (for example 'NVIDIA RTX A4000')",
        ), None
    types = [spec.gpu.type, *spec.gpu.fallback_types]
    prices = {t: p for t in types if (p := catalogue[t].price(spec.gpu.cloud, spec.gpu.spot))}
    if not prices:
        return Check(
            "gpu_type",
            Status.FAIL,
            f"RunPod offers no {kind} {' or '.join(types)} now; try another cloud or type, or "
            "add fallback_types",
        ), None
    if spec.gpu.spot and spec.gpu.bid_per_gpu_usd:
        prices = dict.fromkeys(prices, spec.gpu.bid_per_gpu_usd)
    # The estimate assumes the dearest type that may be rented: a limit must hold for all.
    dearest = max(prices, key=lambda t: prices[t])
    hourly = prices[dearest] * spec.gpu.count
    offered = ", ".join(f"{t} ${prices[t] * spec.gpu.count:.2f}/h" for t in prices)
    missing = [t for t in types if t not in prices]
    note = f"; none offered now: {', '.join(missing)}" if missing else ""
    return Check(
        "gpu_type", Status.PASS, f"{spec.gpu.count} x GPU, {kind}: {offered}{note}"
    ), hourly


def _hosts_check(spec: Spec, catalogue: dict[str, GpuType], floor: str | None) -> list[Check]:
    """Whether RunPod has hosts for the pod now: with a driver that runs the image's CUDA
    (`floor`), and free. The catalogue says both per GPU type (where it says nothing, a type
    is taken to fit)."""
    types = [t for t in (spec.gpu.type, *spec.gpu.fallback_types) if t in catalogue]
    if not types:
        return []  # the gpu_type check says why

    def runs(gpu: GpuType) -> bool:
        return (
            not floor
            or not gpu.cuda_versions
            or any(cuda_version(v) >= cuda_version(floor) for v in gpu.cuda_versions)
        )

    fitting = [t for t in types if runs(catalogue[t])]
    if not fitting:
        seen = "; ".join(f"{t}: {', '.join(catalogue[t].cuda_versions)}" for t in types)
        return [
            Check(
                "gpu_hosts",
                Status.FAIL,
                f"no RunPod host with {' or '.join(types)} runs CUDA {floor} or newer, which the "
                f"image needs (their hosts run {seen}): choose another GPU type",
            )
        ]
    notes = []
    if unfit := [t for t in types if t not in fitting]:
        notes.append(f"not rented (hosts below CUDA {floor}): {', '.join(unfit)}")
    free = [t for t in fitting if catalogue[t].available is not False]
    if not free:
        notes.append(
            f"RunPod has no {' or '.join(fitting)} free now: the run waits for one, retrying"
        )
    elif busy := [t for t in fitting if t not in free]:
        notes.append(f"none free now: {', '.join(busy)}")
    if notes:
        return [Check("gpu_hosts", Status.WARN, "; ".join(notes))]
    where = f" with CUDA {floor} or newer" if floor else ""
    return [Check("gpu_hosts", Status.PASS, f"RunPod has hosts{where} free now")]


def _spot_check(spec: Spec, floor: str | None) -> list[Check]:
    if not spec.gpu.spot:
        return []
    hosts = (
        f"; nor can a spot pod ask for a host whose driver runs CUDA {floor}: one placed on an "
        "older host is stopped as soon as it is seen (GPU_UNAVAILABLE)"
        if floor
        else ""
    )
    return [
        Check(
            "spot",
            Status.WARN,
            "spot pods exist only in RunPod's GraphQL API, which RunPod retires in early 2027, "
            "and RunPod's documentation no longer describes them: expect spot to stop working "
            "then; a spot pod may also be stopped at any time, and the run then fails" + hosts,
        )
    ]


def _estimate(spec: Spec, hourly: float | None) -> Estimate:
    runtime = float(spec.max_runtime_minutes)
    if not hourly:
        return Estimate(0.0, 0.0, runtime, spec.gpu.type)
    minutes = min(runtime, spec.max_cost_usd / hourly * 60)
    return Estimate(hourly, min(spec.max_cost_usd, hourly * runtime / 60), minutes, spec.gpu.type)


async def _unreachable_from_outside(host: str) -> str | None:
    """Why a GPU pod on the internet could not reach `host`, or None when it may."""
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"{host} names this machine or a private network"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return f"{host} does not resolve"
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if all(not address.is_global for address in addresses):
        shown = ", ".join(sorted(map(str, addresses)))
        return f"{host} is a private or loopback address ({shown})"
    return None
