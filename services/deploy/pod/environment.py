"""The pod's environment check, run before anything is installed or downloaded: the GPUs the
pod asked for are visible to torch, and the image's torch is the version the pinned packages
were resolved for. A pod that asked for GPUs never trains on its CPU while the GPUs bill.

    environment.py [--torch VERSION]     (the GPUs asked for: $TUNELAB_GPU_COUNT)

Prints one line that says what it saw. Exit status 0 when the pod fits; NO_GPU_STATUS
(gpu_unavailable) or TORCH_MISMATCH with a line that starts with that code. Embedded in the
bootstrap script and run by the pod's own Python: the standard library, the trainers' shared
module (tunelab_trainer.common, which the pod writes beside this file), and torch where it is
installed (without torch, only nvidia-smi is asked, and the trainer checks again once torch is
installed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tunelab_trainer.common import NO_GPU_STATUS, wanted_gpus

TORCH_MISMATCH = 7


@dataclass(frozen=True)
class Seen:
    wanted: int  # GPUs the pod asked for
    torch_version: str | None  # None: torch is not installed
    torch_cuda: str | None  # the CUDA version torch was built for; None: a CPU build
    cuda_available: bool
    device_count: int
    driver_cuda: str | None  # the newest CUDA the driver runs (nvidia-smi); None: no driver
    smi_gpus: int  # GPUs nvidia-smi lists


def look(wanted: int) -> Seen:
    driver_cuda, smi_gpus = nvidia_smi()
    try:
        import torch
    except ImportError:
        return Seen(wanted, None, None, False, 0, driver_cuda, smi_gpus)
    available = bool(torch.cuda.is_available())
    return Seen(
        wanted=wanted,
        torch_version=str(torch.__version__),
        torch_cuda=torch.version.cuda,
        cuda_available=available,
        device_count=int(torch.cuda.device_count()) if available else 0,
        driver_cuda=driver_cuda,
        smi_gpus=smi_gpus,
    )


def nvidia_smi() -> tuple[str | None, int]:
    """(the CUDA version the driver supports, the GPUs listed); (None, 0) without a driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, 0
    try:
        summary = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None, 0
    match = re.search(r"CUDA Version:\s*([0-9.]+)", summary)
    gpus = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return (match[1] if match else None), gpus


def verdict(seen: Seen, torch_pin: str) -> tuple[int, str]:
    """(exit status, the line to print)."""
    if torch_pin and seen.torch_version is not None and public(seen.torch_version) != torch_pin:
        return TORCH_MISMATCH, (
            f"torch_mismatch: the image has torch {seen.torch_version}, but the pod's packages "
            f"are pinned for torch {torch_pin}; use an image with torch {torch_pin} (the "
            "default image has it)"
        )
    described = describe(seen)
    if seen.wanted <= 0:
        return 0, f"environment: no GPU asked for; {described}"
    if seen.torch_version is None:
        if seen.smi_gpus >= seen.wanted:
            return 0, f"environment: {described}; torch is checked once it is installed"
    elif seen.cuda_available and seen.device_count >= seen.wanted:
        return 0, f"environment: {described}"
    return NO_GPU_STATUS, (
        f"gpu_unavailable: the pod asked for {plural(seen.wanted, 'GPU')} but {described}; "
        "nothing was downloaded or trained"
    )


def describe(seen: Seen) -> str:
    driver = (
        f"the driver runs CUDA {seen.driver_cuda} and nvidia-smi lists "
        f"{plural(seen.smi_gpus, 'GPU')}"
        if seen.driver_cuda or seen.smi_gpus
        else "nvidia-smi finds no driver"
    )
    if seen.torch_version is None:
        return f"torch is not installed; {driver}"
    built = f"CUDA {seen.torch_cuda}" if seen.torch_cuda else "the CPU only"
    return (
        f"torch.cuda.is_available() is {seen.cuda_available} and torch sees "
        f"{plural(seen.device_count, 'GPU')} (torch {seen.torch_version}, built for {built}); "
        f"{driver}"
    )


def public(version: str) -> str:
    """A version without its local label: 2.8.0+cu128 -> 2.8.0."""
    return version.split("+", 1)[0]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="environment.py")
    parser.add_argument("--torch", default="", help="the torch version the packages need")
    args = parser.parse_args(argv)
    status, line = verdict(look(wanted_gpus()), args.torch)
    print(line, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
