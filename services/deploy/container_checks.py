"""The container provider's pre-flight checks: the engine answers, the image is on the host,
the limits fit the host, and a run that downloads a model may reach the internet."""

from __future__ import annotations

from services.deploy.checks import Check, Status
from services.deploy.providers.base import ProviderError
from services.deploy.providers.container import ContainerProvider
from services.deploy.spec import Spec

_MIB = 1024 * 1024


async def container_checks(provider: ContainerProvider, spec: Spec) -> list[Check]:
    try:
        host = await provider.host(spec.image)
    except ProviderError as exc:
        return [
            Check("container_api", Status.FAIL, exc.message, transient=True),
            Check("image", Status.FAIL, "the container engine could not be asked"),
        ]
    where = provider.docker_host or "DOCKER_HOST"
    checks = [Check("container_api", Status.PASS, f"{host.engine} answers at {where}")]
    if host.image_present:
        checks.append(Check("image", Status.PASS, f"{spec.image} is on the container host"))
    else:
        checks.append(
            Check(
                "image",
                Status.FAIL,
                f"image {spec.image} is not on the container host, and pods never pull: `make "
                "images` builds localhost/tunelab/trainer; pull or build any other first",
            )
        )
    checks.extend(_limits(provider, host.cpus, host.memory_bytes))
    if spec.gpu.count:
        checks.append(_gpus(spec.gpu.count, host.gpu_runtime))
    if host.network_problem:
        checks.append(Check("network", Status.FAIL, host.network_problem))
    elif spec.trainer != "tiny" and not provider.network.internet:
        checks.append(
            Check(
                "network",
                Status.FAIL,
                f"base model {spec.base_model} and the trainer's packages are downloaded from "
                "the internet, but the pods' network is internal (it reaches only the gateway): "
                "set TUNELAB_DEPLOY_CONTAINER_INTERNET=true",
            )
        )
    else:
        reach = "the internet and the gateway" if provider.network.internet else "only the gateway"
        checks.append(
            Check("network", Status.PASS, f"pods reach {reach} ({provider.network.name})")
        )
    return checks


def _limits(provider: ContainerProvider, cpus: int, memory_bytes: int) -> list[Check]:
    limits = provider.limits
    problems = []
    if cpus and limits.cpus > cpus:
        problems.append(
            f"{limits.cpus:g} CPUs per pod (TUNELAB_DEPLOY_CONTAINER_CPUS), but the host has {cpus}"
        )
    if memory_bytes and limits.memory_mb * _MIB > memory_bytes:
        problems.append(
            f"{limits.memory_mb} MiB per pod (TUNELAB_DEPLOY_CONTAINER_MEMORY_MB), but the host "
            f"has {memory_bytes // _MIB} MiB"
        )
    if problems:
        return [Check("host_limits", Status.FAIL, "; ".join(problems) + ": lower the setting")]
    shown = (
        f"{limits.cpus:g} CPUs, {limits.memory_mb} MiB, {limits.pids} processes, a "
        f"{limits.work_dir_mb} MiB work directory"
    )
    if limits.work_dir_mb >= limits.memory_mb:
        return [
            Check(
                "host_limits",
                Status.WARN,
                f"{shown}: the work directory is memory (a tmpfs) and counts toward the memory "
                "limit, which it fills on its own",
            )
        ]
    return [Check("host_limits", Status.PASS, f"{shown} per pod, within the host's")]


def _gpus(count: int, runtime: bool) -> Check:
    if runtime:
        return Check("gpu", Status.PASS, f"{count} of the host's GPUs, by a device request")
    return Check(
        "gpu",
        Status.WARN,
        f"{count} GPUs are asked for by a device request, but the engine reports no NVIDIA "
        "runtime or CDI spec: install the NVIDIA container toolkit (Podman: nvidia-ctk cdi "
        "generate), or the pod fails its GPU check before it downloads anything",
    )
