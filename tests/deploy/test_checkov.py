"""checkov's Kubernetes and Dockerfile policies over both rendered overlays and every
Dockerfile, with only the skips of deploy/checkov.yaml (each justified there)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import REPO

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = REPO / "deploy" / "checkov.yaml"


def dockerfiles() -> list[Path]:
    """Each service's, the gateway's, and the images of deploy/images (runtime, PostgreSQL,
    SeaweedFS), whichever exist."""
    found = [
        *sorted(REPO.glob("services/*/Dockerfile")),
        REPO / "gateway" / "Dockerfile",
        *sorted(REPO.glob("deploy/images/*Dockerfile*")),
    ]
    return [path for path in found if path.is_file()]


def run_checkov(files: list[Path]) -> list[dict[str, Any]]:
    """checkov's JSON reports, one per framework."""
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV} is missing: `make checkov-setup` installs it")
    command = [str(CHECKOV), "--config-file", str(CONFIG), "--output", "json"]
    command += ["--framework", "kubernetes", "dockerfile"]
    for path in files:
        command += ["--file", str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode not in (0, 1):  # 1: checks failed, reported in the JSON
        pytest.fail(f"checkov exited {done.returncode}:\n{done.stderr[-4000:]}")
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_passes_the_manifests_and_the_dockerfiles(
    rendered_files: dict[str, Path],
) -> None:
    images = dockerfiles()
    assert len([p for p in images if p.name == "Dockerfile"]) == 5, images
    reports = {r["check_type"]: r for r in run_checkov([*rendered_files.values(), *images])}
    assert set(reports) == {"kubernetes", "dockerfile"}
    for report in reports.values():
        assert report["summary"]["passed"] > 0, report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for report in reports.values()
        for c in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)


def test_each_skip_says_why() -> None:
    lines = CONFIG.read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if line.strip().startswith("- CKV")]
    assert skips
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"{lines[i].strip()} has no reason above it"
