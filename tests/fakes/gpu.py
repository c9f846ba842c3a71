"""Stand-ins for a pod's GPU stack, for tests that run the pod's code on a machine without one:
a `torch` package that says what torch would see, and an `nvidia-smi` that prints what the
driver would. Put the torch folder on PYTHONPATH and the nvidia-smi folder on PATH."""

from __future__ import annotations

import textwrap
from pathlib import Path


def fake_torch(
    folder: Path,
    *,
    version: str = "2.8.0+cu128",
    cuda: str | None = "12.8",
    available: bool = False,
    devices: int = 0,
) -> Path:
    """Writes folder/torch/__init__.py; returns the folder (for PYTHONPATH)."""
    package = folder / "torch"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""\
            import types

            __version__ = {version!r}
            version = types.SimpleNamespace(cuda={cuda!r})
            cuda = types.SimpleNamespace(
                is_available=lambda: {available!r},
                device_count=lambda: {devices!r},
                is_bf16_supported=lambda: False,
            )
            """
        )
    )
    return folder


def fake_nvidia_smi(folder: Path, *, cuda_version: str = "12.2", gpus: int = 1) -> Path:
    """Writes folder/nvidia-smi; returns the folder (for PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = "\n".join(f"GPU {i}: NVIDIA A40 (UUID: GPU-{i:08d})" for i in range(gpus))
    script = folder / "nvidia-smi"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            case "$1" in
              -L) printf '%s\\n' {listing!r} ;;
              --query-gpu=*) printf 'NVIDIA A40, 46068 MiB\\n' ;;
              *) printf '| Driver Version: 535.0  CUDA Version: {cuda_version} |\\n' ;;
            esac
            """
        )
    )
    script.chmod(0o755)
    return folder
