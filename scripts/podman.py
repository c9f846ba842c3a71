"""What the container scripts (images, up, k8s_smoke) share: which tool runs containers, with
this project's podman settings, and a clear word when there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "deploy" / "containers" / "containers.conf"


def tool() -> str:
    """$CONTAINER_TOOL, else podman (with CONTAINERS_CONF defaulting to ours), else docker."""
    if chosen := os.environ.get("CONTAINER_TOOL"):
        return chosen
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return "podman" if shutil.which("podman") or not shutil.which("docker") else "docker"


def podman(
    *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the container tool quietly and return what it printed."""
    return subprocess.run(
        [tool(), *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def ensure_installed(*, debootstrap: bool) -> None:
    """Install what is missing of podman, runc (and debootstrap, to make a base image) from
    Debian's packages where this is root on Debian (a fresh machine of the kind CI runs on);
    elsewhere say what to install."""
    wanted = ["podman", "runc"] if tool() == "podman" else [tool()]
    missing = [
        p for p in [*wanted, *(["debootstrap"] if debootstrap else [])] if not shutil.which(p)
    ]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get") and "docker" not in missing:
        print(f"installing {' '.join(missing)} (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "install", "--yes", "--quiet", *missing], check=True)
        return
    sys.exit(
        f"{', '.join(missing)} missing: install it (Debian/Ubuntu: apt-get install podman runc "
        "debootstrap), or set CONTAINER_TOOL=docker, or TUNELAB_BASE_IMAGE to a base image"
    )
