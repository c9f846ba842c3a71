"""Generates a deployment's bootstrap script from the bootstrap.sh template.

Values go into the template only through `shlex.quote`, whatever they hold (quotes, `$()`,
backticks, newlines); files (the reporter, the trainer) go in as quoted here-documents, which
the shell does not expand. The script is secret-free: the pod's environment carries the job
token and the dataset URL. Pods receive the script gzipped and base64-encoded in an environment
variable, and `launch_command` unpacks and runs it, on RunPod and in a local process alike.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

PACKED_ENV = "TUNELAB_BOOTSTRAP"
_TEMPLATE = "bootstrap.sh"
_FILE_SLOTS = {"report_py": "TUNELAB_REPORT_PY", "trainer_py": "TUNELAB_TRAINER_PY"}


class _Template(string.Template):
    delimiter = "@@"


@dataclass(frozen=True)
class Trainer:
    """What trains: a one-file Python program and the packages it needs installed first."""

    filename: str
    source: str
    pip_requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bootstrap:
    deployment_id: str
    api_url: str
    dataset_sha256: str
    dataset_size: int
    config: dict[str, Any]
    trainer: Trainer
    heartbeat_seconds: int = 60
    download_attempts: int = 4


def trainer(filename: str, pip_requirements: Sequence[str] = ()) -> Trainer:
    """One of the trainers shipped in the tunelab_trainer package."""
    source = resources.files("tunelab_trainer").joinpath(filename).read_text()
    return Trainer(filename, source, tuple(pip_requirements))


def render(spec: Bootstrap) -> str:
    template = resources.files(__package__).joinpath(_TEMPLATE).read_text()
    report_py = resources.files(__package__).joinpath("report.py").read_text()
    files = {"report_py": report_py, "trainer_py": spec.trainer.source}
    for slot, delimiter in _FILE_SLOTS.items():
        if delimiter in files[slot].splitlines():
            raise ValueError(f"{slot} contains its here-document delimiter {delimiter}")
        files[slot] = files[slot].rstrip("\n")
    values = {
        "deployment_id": spec.deployment_id,
        "api_url": spec.api_url,
        "dataset_sha256": spec.dataset_sha256,
        "dataset_size": str(spec.dataset_size),
        "config_json": json.dumps(spec.config, sort_keys=True),
        "heartbeat_seconds": str(spec.heartbeat_seconds),
        "trainer": spec.trainer.filename,
        "download_attempts": str(spec.download_attempts),
    }
    quoted = {name: shlex.quote(value) for name, value in values.items()}
    quoted["pip_requirements"] = " ".join(shlex.quote(r) for r in spec.trainer.pip_requirements)
    return _Template(template).substitute(quoted, **files)


def pack(script: str) -> str:
    return base64.b64encode(gzip.compress(script.encode(), mtime=0)).decode()


def launch_command() -> list[str]:
    """The pod's command: unpack the script from the environment into the work directory and
    run it. Static text: nothing of the deployment is in it."""
    unpack = (
        'dir="${TUNELAB_WORK_DIR:-/workspace/tunelab}"; mkdir -p "$dir" && '
        f'printf %s "${PACKED_ENV}" | base64 -d | gunzip > "$dir/bootstrap.sh" && '
        f'unset {PACKED_ENV} && exec bash "$dir/bootstrap.sh"'
    )
    return ["bash", "-c", unpack]
