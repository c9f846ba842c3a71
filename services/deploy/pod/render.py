"""Generates a deployment's bootstrap script from the bootstrap.sh template.

Values go into the template only through `shlex.quote`, whatever they hold (quotes, `$()`,
backticks, newlines); files (the reporter, the environment check, the packages' lock, the
trainer) go in as quoted here-documents, which the shell does not expand. The script is
secret-free: the pod's environment carries the job token and the dataset URL. Pods receive the
script gzipped and base64-encoded in an environment variable, and `launch_command` unpacks and
runs it, on RunPod and in a local process alike.
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

from services.deploy.pod import stack

PACKED_ENV = "TUNELAB_BOOTSTRAP"
_TEMPLATE = "bootstrap.sh"
# The pod's own scripts, written under its work directory before anything runs.
_POD_FILES = {
    "report_py": ("report.py", "TUNELAB_REPORT_PY"),
    "environment_py": ("environment.py", "TUNELAB_ENVIRONMENT_PY"),
}
_CONSTRAINTS_DELIMITER = "TUNELAB_CONSTRAINTS"
# The trainers' package: what every trainer imports (and environment.py), shipped to every pod
# with the trainer the run uses.
_PACKAGE = "tunelab_trainer"
_SHARED = ("__init__.py", "common.py")


class _Template(string.Template):
    delimiter = "@@"


@dataclass(frozen=True)
class Trainer:
    """What trains: a module the pod runs with `python -m`, the files it needs (relative path,
    text), the packages to install first, and their lock (a constraints file of exact pins,
    torch among them: pip installs these versions or fails, and never replaces the image's
    torch)."""

    module: str
    files: tuple[tuple[str, str], ...]
    pip_requirements: tuple[str, ...] = ()
    pip_constraints: str = ""

    @property
    def torch_version(self) -> str:
        """The torch the lock pins, which the image must have; empty without one."""
        return stack.pins(self.pip_constraints).get("torch", "")


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
    # After its final report the pod waits this long to be terminated before it exits
    # (TUNELAB_LINGER_SECONDS in its environment overrides it).
    linger_seconds: int = 3600


def trainer(name: str, pip_requirements: Sequence[str] = (), pip_constraints: str = "") -> Trainer:
    """One of the trainers of the tunelab_trainer package ("tiny", "trl_train")."""
    module = f"{_PACKAGE}/{name}.py"
    files = (
        *_shared_files(),
        (module, resources.files(_PACKAGE).joinpath(f"{name}.py").read_text()),
    )
    if pip_requirements and not stack.pins(pip_constraints):
        raise ValueError("pip requirements need their lock: pass the constraints file's text")
    return Trainer(f"{_PACKAGE}.{name}", files, tuple(pip_requirements), pip_constraints)


def _shared_files() -> tuple[tuple[str, str], ...]:
    package = resources.files(_PACKAGE)
    return tuple((f"{_PACKAGE}/{name}", package.joinpath(name).read_text()) for name in _SHARED)


def _pod_files(trainer: Trainer) -> tuple[tuple[str, str], ...]:
    """The trainer's files, and the package's shared ones whatever the trainer: the
    environment check imports them too."""
    paths = {path for path, _ in trainer.files}
    return (*(file for file in _shared_files() if file[0] not in paths), *trainer.files)


def gpu_trainer() -> Trainer:
    """The GPU pods' trainer, with the packages pinned for the default image."""
    return trainer("trl_train", stack.REQUIREMENTS, stack.constraints())


def render(spec: Bootstrap) -> str:
    here = resources.files(__package__)
    template = here.joinpath(_TEMPLATE).read_text()
    files = {
        name: _heredoc_body(here.joinpath(filename).read_text(), delimiter)
        for name, (filename, delimiter) in _POD_FILES.items()
    }
    values = {
        "deployment_id": spec.deployment_id,
        "api_url": spec.api_url,
        "dataset_sha256": spec.dataset_sha256,
        "dataset_size": str(spec.dataset_size),
        "config_json": json.dumps(spec.config, sort_keys=True),
        "heartbeat_seconds": str(spec.heartbeat_seconds),
        "trainer_module": spec.trainer.module,
        "download_attempts": str(spec.download_attempts),
        "linger_seconds": str(spec.linger_seconds),
        "torch_version": spec.trainer.torch_version,
    }
    quoted = {name: shlex.quote(value) for name, value in values.items()}
    quoted["pip_requirements"] = " ".join(shlex.quote(r) for r in spec.trainer.pip_requirements)
    return _Template(template).substitute(
        quoted,
        **files,
        constraints_txt=_heredoc_body(spec.trainer.pip_constraints, _CONSTRAINTS_DELIMITER),
        trainer_files=_write_files(_pod_files(spec.trainer)),
    )


def _heredoc_body(text: str, delimiter: str) -> str:
    if delimiter in text.splitlines():
        raise ValueError(f"a shipped file contains its here-document delimiter {delimiter}")
    return text.rstrip("\n")


def _write_files(files: Sequence[tuple[str, str]]) -> str:
    """Shell lines that write each file under $WORK_DIR: quoted paths, quoted here-documents
    (whose text the shell never expands)."""
    lines = []
    for number, (path, text) in enumerate(files, 1):
        delimiter = f"TUNELAB_FILE_{number}"
        target = '"$WORK_DIR"/' + shlex.quote(path)
        parent = path.rpartition("/")[0]
        if parent:
            lines.append('  mkdir -p "$WORK_DIR"/' + shlex.quote(parent))
        lines.append(f"  cat > {target} <<'{delimiter}'")
        lines.append(_heredoc_body(text, delimiter))
        lines.append(delimiter)
    return "\n".join(lines)


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
