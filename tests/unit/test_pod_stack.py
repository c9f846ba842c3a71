"""The GPU pod's pinned stack: the image, torch, the trainer's packages and their lock agree, and
pip, resolving the pod's requirements for the image's Python and platform against the lock,
installs exactly the lock and never another torch."""

from __future__ import annotations

import os
import re
import socket

import pytest

from services.deploy.pod import environment, lock, render, stack
from services.deploy.settings import DeploySettings

# runpod/pytorch:<release>-cu<CUDA digits>-torch<torch digits>-ubuntu<version>
IMAGE_TAG = re.compile(r"runpod/pytorch:[0-9.]+-cu(\d\d)(\d)\d*-torch(\d)(\d)(\d)-ubuntu\d+")


def test_the_image_tag_names_the_pinned_torch_and_cuda() -> None:
    match = IMAGE_TAG.fullmatch(stack.IMAGE)
    assert match, stack.IMAGE
    assert f"{int(match[1])}.{match[2]}" == stack.CUDA_VERSION
    assert ".".join(match.group(3, 4, 5)) == stack.TORCH_VERSION


def test_the_settings_default_to_the_pinned_image_and_its_cuda() -> None:
    fields = DeploySettings.model_fields
    assert fields["runpod_image"].default == stack.IMAGE
    assert fields["pod_min_cuda_version"].default == stack.CUDA_VERSION


def test_the_lock_pins_the_images_torch_and_every_requirement() -> None:
    pins = stack.pins(stack.constraints())
    assert pins["torch"] == stack.TORCH_VERSION
    for requirement in stack.REQUIREMENTS:
        name, version = requirement.split("==")
        assert pins[stack.normalize(name)] == version
    assert " ".join(stack.REQUIREMENTS) in stack.constraints()  # the header says what it locks


def test_the_gpu_trainer_ships_the_lock_and_installs_with_it() -> None:
    spec = render.gpu_trainer()
    assert spec.torch_version == stack.TORCH_VERSION
    script = render.render(
        render.Bootstrap(
            deployment_id="dep_x",
            api_url="https://example.com",
            dataset_sha256="0" * 64,
            dataset_size=1,
            config={},
            trainer=spec,
        )
    )
    opening = """cat > "$WORK_DIR/constraints.txt" <<'TUNELAB_CONSTRAINTS'\n"""
    shipped = script[script.index(opening) + len(opening) :].split("\nTUNELAB_CONSTRAINTS\n")[0]
    assert shipped == stack.constraints().rstrip("\n")
    assert '--constraint "$WORK_DIR/constraints.txt"' in script
    assert f"readonly TORCH_VERSION={stack.TORCH_VERSION}" in script
    for requirement in stack.REQUIREMENTS:
        assert requirement in script


def test_requirements_without_a_lock_are_refused() -> None:
    with pytest.raises(ValueError, match="need their lock"):
        render.trainer("trl_train", stack.REQUIREMENTS)


@pytest.mark.parametrize(
    ("seen", "status", "starts"),
    [
        # (wanted, torch, torch's CUDA, available, devices, driver CUDA, GPUs nvidia-smi lists)
        ((1, "2.8.0+cu128", "12.8", True, 1, "12.8", 1), 0, "environment: "),
        ((2, "2.8.0+cu128", "12.8", True, 1, "12.8", 2), 6, "gpu_unavailable: "),
        ((1, "2.8.0+cpu", None, False, 0, "12.8", 1), 6, "gpu_unavailable: "),
        ((1, None, None, False, 0, "12.8", 1), 0, "environment: "),  # torch comes with pip
        ((1, None, None, False, 0, None, 0), 6, "gpu_unavailable: "),
        ((0, "2.8.0", None, False, 0, None, 0), 0, "environment: no GPU asked for"),
        ((1, "2.4.0+cu124", "12.4", True, 1, "12.8", 1), 7, "torch_mismatch: "),
    ],
)
def test_the_environment_verdict(
    seen: tuple[int, str | None, str | None, bool, int, str | None, int], status: int, starts: str
) -> None:
    code, line = environment.verdict(environment.Seen(*seen), stack.TORCH_VERSION)
    assert code == status
    assert line.startswith(starts), line


def test_a_cpu_build_of_torch_is_named_as_such() -> None:
    seen = environment.Seen(1, "2.8.0+cpu", None, False, 0, "12.8", 1)
    _, line = environment.verdict(seen, "")
    assert "built for the CPU only" in line
    assert "the driver runs CUDA 12.8 and nvidia-smi lists 1 GPU" in line


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_the_requirements_resolve_to_the_lock_against_the_images_torch() -> None:
    """pip resolves the pod's install as it would run on the image (Python 3.12, manylinux
    x86_64, wheels only) with the lock as constraints: it must want exactly the lock, torch at
    the image's version. A requirement that needs another torch fails here, not on a billed
    GPU. Only metadata is read: no wheel is downloaded (torch's alone is 900 MB)."""
    if not _index_reachable():
        if os.environ.get("CI"):
            pytest.fail("PyPI is unreachable, and CI must resolve the pod's requirements")
        pytest.skip("PyPI is unreachable from here")
    resolution = lock.resolve(constraints=stack.constraints())
    assert resolution.pins["torch"] == stack.TORCH_VERSION
    assert resolution.pins == stack.pins(stack.constraints()), (
        "the lock is stale: run `python -m services.deploy.pod.lock`"
    )
    whole_wheels = re.findall(r"Downloading (\S+\.whl) \(", resolution.output)
    assert not whole_wheels, f"pip downloaded whole wheels: {whole_wheels}"
