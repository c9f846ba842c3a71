"""Both overlays render, and every object they render is valid Kubernetes: strict schema
validation (unknown fields refused) by kubernetes-validate against 1.33, the oldest minor
release its providers still commonly run, and 1.37, the newest it bundles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import K8S, OVERLAYS, render, venv_tool

KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(
    rendered_files: dict[str, Path], overlay: str, version: str
) -> None:
    done = subprocess.run(
        [
            str(venv_tool("kubernetes-validate")),
            "--strict",
            "--quiet",
            "--kubernetes-version",
            version,
            str(rendered_files[overlay]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_names_its_namespace(rendered_text: dict[str, str], overlay: str) -> None:
    docs = [d for d in yaml.safe_load_all(rendered_text[overlay]) if d]
    assert len(docs) > 40
    unplaced = [
        f"{d['kind']} {d['metadata']['name']}"
        for d in docs
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "tunelab"
    ]
    assert unplaced == []


def test_the_base_commits_no_secret() -> None:
    docs = [d for d in yaml.safe_load_all(render(K8S / "base")) if d]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == []
