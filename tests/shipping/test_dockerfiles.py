"""The Dockerfiles: hadolint-clean, and each image holds its own service's code only, runs as
the unprivileged user, and starts in exec form."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
SERVICES = ["datasets", "deploy", "tracing", "eval"]
DOCKERFILES = sorted(
    [
        *ROOT.glob("services/*/Dockerfile"),
        ROOT / "gateway" / "Dockerfile",
        *(ROOT / "deploy" / "images").glob("*.Dockerfile"),
    ]
)


def test_every_image_has_a_dockerfile() -> None:
    names = {p.parent.name for p in DOCKERFILES if p.name == "Dockerfile"}
    assert names == {*SERVICES, "gateway"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(path: Path) -> None:
    found = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(path)], capture_output=True, text=True
    )
    assert found.returncode == 0, found.stdout + found.stderr


def copied(path: Path) -> set[str]:
    return set(re.findall(r"^COPY --chown=\S+ (\S+) /app/", path.read_text(), flags=re.M))


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_image_holds_its_own_code_and_the_contracts(service: str) -> None:
    expected = {"services/__init__.py", "services/common", f"services/{service}"}
    expected |= {"gen/python/tunelab"} | ({"tunelab_trainer"} if service == "deploy" else set())
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    assert copied(ROOT / "services" / service / "Dockerfile") == expected
    assert f'ENTRYPOINT ["python", "-m", "services.{service}"]' in text
    assert "HEALTHCHECK" in text
    assert "COPY . " not in text


def test_the_gateway_image_holds_no_service() -> None:
    assert copied(ROOT / "gateway" / "Dockerfile") == {
        "services/__init__.py", "services/common", "gateway", "gen/python/tunelab"
    }  # fmt: skip


def test_the_runtime_runs_as_the_unprivileged_user_and_keeps_no_installer() -> None:
    text = (ROOT / "deploy" / "images" / "runtime.Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert re.findall(r"^USER (\S+)", final, flags=re.M) == ["10001:10001"]
    assert "pip install" not in final
    assert "pip uninstall --yes --no-cache-dir pip setuptools" in text
    assert re.search(r"^ARG BASE=\S+@sha256:[0-9a-f]{64}$", text, flags=re.M)


def test_the_build_context_is_an_allow_list() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == {
        "services", "gateway", "gen/python/tunelab", "tunelab_trainer"
    }  # fmt: skip
