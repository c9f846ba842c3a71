"""The GPU pod's Python stack: the image it runs, and the exact packages installed on it.

The image is RunPod's runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404 (the runpod/containers
repository, release 1.0.2: official-templates/pytorch/docker-bake.hcl builds it from
runpod/base:1.0.2-cuda1281-ubuntu2404 with `python -m pip install torch==2.8.0 ...
--index-url https://download.pytorch.org/whl/cu128`; official-templates/base/Dockerfile links
`python` to Ubuntu 24.04's /usr/bin/python3.12). So: Python 3.12, CUDA 12.8.1, torch 2.8.0.

The trainer's packages are the releases that were current when that image came out (October
2025), which their projects tested against torch 2.8; `make test-trl` runs trl_train with them
end to end. constraints.txt pins torch at the image's version and every package their install
pulls, as `pip install --dry-run --report` resolves them for that Python and platform
(`python -m services.deploy.pod.lock` rewrites it; tests/unit/test_pod_stack.py fails when it is
stale or when anything would replace torch). The pod installs with `pip install -c
constraints.txt`, which installs exactly these or fails: it never swaps the image's torch.
"""

from __future__ import annotations

import re
from importlib import resources

IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
PYTHON_VERSION = "3.12"
TORCH_VERSION = "2.8.0"
# The image's CUDA, major.minor: pods go to hosts whose driver runs it (minCudaVersion).
CUDA_VERSION = "12.8"
REQUIREMENTS = (
    "transformers==4.57.6",
    "trl==0.24.0",
    "peft==0.17.1",
    "datasets==4.3.0",
    "accelerate==1.11.0",
)
CONSTRAINTS_FILE = "constraints.txt"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def constraints() -> str:
    """The lock shipped to the pod (constraints.txt)."""
    return resources.files(__package__).joinpath(CONSTRAINTS_FILE).read_text()


def pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version` line (names normalized as pip compares them);
    comments and blank lines are skipped."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"not an exact pin: {line!r}")
        found[normalize(match[1])] = match[2]
    return found


def normalize(name: str) -> str:
    """A project name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()
