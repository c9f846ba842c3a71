"""The pre-flight's image check: the pod's packages are pinned for one image; another is
allowed, with a warning that the combination is untested."""

from __future__ import annotations

from services.deploy.checks import Status
from services.deploy.pod import stack
from services.deploy.preflight import _image_check
from services.deploy.spec import parse
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb


def request(provider: str = "runpod", image: str = "") -> api.DeploymentSpec:
    return api.DeploymentSpec(
        provider=provider,
        dataset_id="ds_x",
        method=pb.TRAINING_METHOD_SFT,
        base_model="Qwen/Qwen2.5-0.5B-Instruct" if provider == "runpod" else "",
        gpu=pb.GpuSpec(type="NVIDIA RTX A4000" if provider == "runpod" else ""),
        limits=pb.Limits(max_runtime_minutes=60, max_cost_usd=5),
        image=image,
    )


def test_the_default_image_passes() -> None:
    (check,) = _image_check(parse(request(), default_image=stack.IMAGE))
    assert check.name == "image"
    assert check.status is Status.PASS
    assert "torch 2.8.0" in check.message


def test_another_image_is_a_warning_not_a_failure() -> None:
    other = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
    (check,) = _image_check(parse(request(image=other), default_image=stack.IMAGE))
    assert check.status is Status.WARN
    assert check.message.startswith(f"image {other} is untested with the pod's pinned packages")
    assert stack.IMAGE in check.message
    # An operator's own default is just as untested.
    (operator,) = _image_check(parse(request(), default_image=other))
    assert operator.status is Status.WARN


def test_the_local_provider_runs_no_image() -> None:
    assert _image_check(parse(request("local"), default_image=stack.IMAGE)) == []
