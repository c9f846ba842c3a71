"""The trainers that the deploy service ships to a pod as the tunelab_trainer package.

Each is run the way the pod runs it: the package's __init__.py, common.py and the trainer are
copied into a working directory as tunelab_trainer/, and the trainer is started there as
`python -m tunelab_trainer.tiny config.json`, with the repository off PYTHONPATH (the copy comes
first on sys.path), so a stray import of the rest of this repository would fail here too.
trl_train.py needs torch and TRL to train, which the test environment lacks, so only its config
check and its dataset check (both before any ML import) run here.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import tunelab_trainer
from tests.fakes.gpu import fake_torch

TRAINERS = Path(tunelab_trainer.__file__).parent
TINY = TRAINERS / "tiny.py"
TRL = TRAINERS / "trl_train.py"
COMMON = TRAINERS / "common.py"
SHIPPED = ("__init__.py", "common.py")  # with every trainer, as the deploy service ships them
PREFIX = "TUNELAB_PROGRESS "
PROGRESS_KEYS = {
    "step",
    "total_steps",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "rewards_accuracy",
    "rewards_margin",
    "final",
}

NAMES = ["Ada", "Bo", "Cyd", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo"]
THINGS = ["apples", "pears", "books", "coins", "stamps", "shells"]


def chat_rows(count: int = 120, seed: int = 0) -> list[dict[str, Any]]:
    """Small chat rows: a system prompt, a question, an answer in a steady style."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        question, answer = rng.choice(
            [
                (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
                (f"{name} has {a} {thing} and finds {b} more. How many now?", f"{a + b} {thing}."),
                (f"What is {a} times 2?", f"{a} times 2 is {2 * a}."),
                (f"Say hello to {name}.", f"Hello, {name}! Nice to meet you."),
            ]
        )
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a friendly tutor."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer + " Anything else?"},
                ]
            }
        )
    return rows


def text_rows(count: int = 120, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "text": f"{name} keeps {rng.randint(2, 90)} {thing} in a box. Every morning "
            f"{name} counts the {thing} and writes the number down."
        }
        for name, thing in ((rng.choice(NAMES), rng.choice(THINGS)) for _ in range(count))
    ]


def preference_rows(
    count: int = 120, seed: int = 0, conversational: bool = False
) -> list[dict[str, Any]]:
    """Pairs where the chosen answer is right and polite, the rejected one curt or wrong."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        prompt = f"What is {a} plus {b}?"
        chosen = f"{a} plus {b} is {a + b}. Happy to help!"
        rejected = rng.choice(
            [f"Dunno. Maybe {a + b + rng.randint(1, 9)}?", "Work it out yourself.", "No."]
        )
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt + "\n", "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    output_dir: Path

    @property
    def progress(self) -> list[dict[str, Any]]:
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith(PREFIX)]
        return [json.loads(ln.removeprefix(PREFIX)) for ln in lines]

    @property
    def error(self) -> str:
        """The last line on stderr, where the trainers put their one-line error."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def ship(trainer: Path, workdir: Path) -> None:
    """Copies the trainer and the files it ships with into workdir/tunelab_trainer/."""
    package = workdir / TRAINERS.name
    package.mkdir(parents=True, exist_ok=True)
    for name in (*SHIPPED, trainer.name):
        shutil.copy(TRAINERS / name, package / name)


def pod_environment() -> dict[str, str]:
    """This environment without PYTHONPATH (nor PYTHONSAFEPATH, which would drop the working
    directory from sys.path): the trainer finds the package only as the copy in its cwd."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONSAFEPATH")
    }


def write_config(
    workdir: Path,
    *,
    method: str = "sft",
    dataset: Path | None = None,
    base_model: str = "tiny",
    hyperparameters: dict[str, Any] | None = None,
) -> Path:
    """Writes workdir/config.json; the output goes to workdir/output."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "deployment_id": "dep_test",
        "method": method,
        "base_model": base_model,
        "dataset_path": str(dataset or workdir / "dataset.jsonl"),
        "output_dir": str(workdir / "output"),
        "hyperparameters": hyperparameters or {},
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def run_trainer(
    trainer: Path,
    workdir: Path,
    *,
    method: str = "sft",
    dataset: Path | None = None,
    base_model: str = "tiny",
    hyperparameters: dict[str, Any] | None = None,
    check: bool = False,
) -> Run:
    """Runs the trainer as the pod does: shipped into workdir, `python -m` from there."""
    ship(trainer, workdir)
    write_config(
        workdir,
        method=method,
        dataset=dataset,
        base_model=base_model,
        hyperparameters=hyperparameters,
    )
    module = f"{TRAINERS.name}.{trainer.stem}"
    command = [sys.executable, "-m", module, *(["--check"] if check else []), "config.json"]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=workdir,
        env=pod_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(
        done.returncode, done.stdout, done.stderr, time.monotonic() - started, workdir / "output"
    )


def assert_progress_protocol(run: Run) -> list[dict[str, Any]]:
    """Checks the progress lines and returns them; the last one is the final line."""
    lines = run.progress
    assert len(lines) >= 3, run.stdout
    *steps, final = lines
    total = steps[0]["total_steps"]
    for line in lines:
        assert set(line) <= PROGRESS_KEYS, line
        assert isinstance(line["step"], int)
        assert line["total_steps"] == total
        assert isinstance(line["loss"], float)
    assert steps[0]["step"] == 1
    assert steps[-1]["step"] == total
    numbers = [line["step"] for line in steps]
    assert numbers == sorted(set(numbers)), "steps must increase"
    assert "final" not in steps[-1]
    assert final["final"] is True
    assert final["step"] == total
    return lines


@pytest.fixture
def tiny_module() -> Iterator[ModuleType]:
    """tiny.py imported as a module, to test its gradients directly."""
    spec = importlib.util.spec_from_file_location("tunelab_tiny_trainer", TINY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


# ---------------------------------------------------------------------------------------------
# tiny.py: training


@pytest.mark.parametrize(
    ("method", "rows", "hyperparameters"),
    [
        pytest.param("sft", chat_rows(), {"epochs": 2}, id="chat"),
        pytest.param("sft", text_rows(), {"learning_rate": 0.002}, id="text"),
        pytest.param("dpo", preference_rows(), {"epochs": 3}, id="preference"),
        pytest.param(
            "dpo",
            preference_rows(conversational=True),
            {"epochs": 3, "warmup_ratio": 0.1},
            id="conversational-preference",
        ),
    ],
)
def test_tiny_trains_and_reports_progress(
    tmp_path: Path,
    method: str,
    rows: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", rows)
    run = run_trainer(
        TINY, tmp_path, method=method, dataset=dataset, hyperparameters=hyperparameters
    )

    assert run.returncode == 0, run.stderr
    assert run.seconds < 15
    lines = assert_progress_protocol(run)
    first, final = lines[0], lines[-1]
    assert final["loss"] < 0.8 * first["loss"], (first, final)
    if method == "dpo":
        assert first["loss"] == pytest.approx(np.log(2), abs=1e-4)  # policy == reference
        assert final["rewards_accuracy"] > 0.9
        assert final["rewards_margin"] > 0
    else:
        assert first["loss"] == pytest.approx(np.log(256), abs=0.1)  # uniform over bytes

    with np.load(run.output_dir / "model.npz") as model:
        assert {"embedding", "w1", "b1", "w2", "b2", "context"} <= set(model.files)
        assert all(np.isfinite(model[name]).all() for name in model.files)
    metrics = json.loads((run.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == final["step"]
    assert metrics["final_loss"] == pytest.approx(final["loss"], rel=1e-4)


def test_tiny_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", chat_rows(60))
    runs = [
        run_trainer(
            TINY, tmp_path / name, dataset=dataset, hyperparameters={"seed": seed, "max_steps": 300}
        )
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    same, again, other = runs
    assert same.progress[0] == again.progress[0]
    assert same.progress[-1] == again.progress[-1]
    assert same.progress[-1]["step"] == 300
    weights = []
    for run in runs:
        with np.load(run.output_dir / "model.npz") as model:
            weights.append({name: model[name] for name in model.files})
    assert all(np.array_equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not np.array_equal(weights[0]["w1"], weights[2]["w1"])
    assert same.progress[-1]["loss"] != other.progress[-1]["loss"]


def test_tiny_prints_at_most_two_lines_a_second(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", text_rows(60))
    run = run_trainer(TINY, tmp_path, dataset=dataset, hyperparameters={"max_steps": 4000})
    assert run.returncode == 0, run.stderr
    lines = assert_progress_protocol(run)
    assert lines[-1]["step"] == 4000
    assert len(lines) <= 2 * run.seconds + 3


def test_tiny_notes_unknown_hyperparameters_and_trains(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", text_rows(20))
    run = run_trainer(
        TINY,
        tmp_path,
        dataset=dataset,
        hyperparameters={"max_steps": 5, "lora_alpha": 32, "seed": None},
    )
    assert run.returncode == 0, run.stderr
    assert "lora_alpha" in run.stderr
    final = run.progress[-1]
    assert (final["step"], final["final"]) == (5, True)


# ---------------------------------------------------------------------------------------------
# tiny.py: failures


def test_dpo_on_sft_rows_names_the_missing_fields_and_suggests_sft(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", chat_rows(5))
    run = run_trainer(TINY, tmp_path, method="dpo", dataset=dataset)
    assert run.returncode == 2
    assert run.error.startswith("tunelab trainer: dataset line 1 ")
    for name in ("'prompt'", "'chosen'", "'rejected'", 'method "sft"'):
        assert name in run.error
    assert not run.progress
    assert not (run.output_dir / "model.npz").exists()


def test_sft_on_preference_rows_suggests_dpo(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", preference_rows(5))
    run = run_trainer(TINY, tmp_path, method="sft", dataset=dataset)
    assert run.returncode == 2
    assert 'method "dpo"' in run.error


def test_empty_dataset(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("\n\n")
    run = run_trainer(TINY, tmp_path, dataset=dataset)
    assert run.returncode == 2
    assert "has no rows" in run.error


def test_missing_dataset(tmp_path: Path) -> None:
    run = run_trainer(TINY, tmp_path, dataset=tmp_path / "nowhere.jsonl")
    assert run.returncode == 2
    assert "does not exist" in run.error


def test_bad_json_line_is_named(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset.jsonl"
    good = json.dumps({"text": "fine"})
    dataset.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    run = run_trainer(TINY, tmp_path, dataset=dataset)
    assert run.returncode == 2
    assert "dataset line 3 is not valid JSON" in run.error


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"learning_rate": -0.001}, "hyperparameters.learning_rate"),
        ({"batch_size": 0}, "hyperparameters.batch_size"),
        ({"epochs": "two"}, "hyperparameters.epochs"),
        ({"warmup_ratio": 1.5}, "hyperparameters.warmup_ratio"),
        ({"max_steps": 2.5}, "hyperparameters.max_steps"),
    ],
)
def test_invalid_hyperparameters(
    tmp_path: Path, hyperparameters: dict[str, Any], named: str
) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", text_rows(5))
    run = run_trainer(TINY, tmp_path, dataset=dataset, hyperparameters=hyperparameters)
    assert run.returncode == 2
    assert run.error.startswith(f"tunelab trainer: {named} must be")


def test_check_loss_stops_a_diverged_run(tiny_module: ModuleType) -> None:
    tiny_module.check_loss(12.5, 3)
    for loss in (math.nan, math.inf, -math.inf):
        with pytest.raises(tiny_module.TrainingError) as caught:
            tiny_module.check_loss(loss, 7)
        assert str(caught.value) == (
            f"the loss diverged ({loss}) at step 7: lower hyperparameters.learning_rate"
        )


def test_tiny_stops_with_status_1_when_the_loss_diverges(
    tiny_module: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Adam's bounded steps keep even learning_rate 1.0 finite, so the loss is made NaN at the
    third step by hand; main() then runs as in the CLI, in this process."""
    sft_loss = tiny_module.sft_loss
    calls = 0

    def diverging(*args: Any) -> tuple[float, Any]:
        nonlocal calls
        calls += 1
        loss, grads = sft_loss(*args)
        return (math.nan if calls >= 3 else loss), grads

    monkeypatch.setattr(tiny_module, "sft_loss", diverging)
    write_jsonl(tmp_path / "dataset.jsonl", text_rows(20))
    config = write_config(tmp_path, hyperparameters={"max_steps": 10})

    assert tiny_module.main([str(config)]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == (
        "tunelab trainer: the loss diverged (nan) at step 3: lower hyperparameters.learning_rate"
    )
    assert "Traceback" not in err
    steps = [json.loads(ln.removeprefix(PREFIX)) for ln in out.splitlines()]
    assert [line["step"] for line in steps] == [1]  # the first step's line, never a NaN one
    assert not (tmp_path / "output" / "model.npz").exists()


def test_tiny_refuses_other_base_models(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", text_rows(5))
    run = run_trainer(TINY, tmp_path, dataset=dataset, base_model="Qwen/Qwen2.5-0.5B")
    assert run.returncode == 2
    assert 'only trains "tiny"' in run.error
    assert "TRL" in run.error


# ---------------------------------------------------------------------------------------------
# tiny.py: gradients


def as_float64(params: dict[str, Any]) -> dict[str, Any]:
    return {name: value.astype(np.float64) for name, value in params.items()}


def assert_gradients_match(
    loss_and_grads: Any, params: dict[str, Any], rng: np.random.Generator
) -> None:
    """Compares analytic gradients with central differences at a few entries per parameter."""
    _, grads = loss_and_grads(params)
    for name, value in params.items():
        for flat in rng.choice(value.size, size=min(6, value.size), replace=False):
            index = np.unravel_index(flat, value.shape)
            saved = value[index]
            value[index] = saved + 1e-6
            up, _ = loss_and_grads(params)
            value[index] = saved - 1e-6
            down, _ = loss_and_grads(params)
            value[index] = saved
            numeric = (up - down) / 2e-6
            assert grads[name][index] == pytest.approx(numeric, rel=1e-4, abs=1e-7), name


def test_sft_gradients_are_right(tiny_module: ModuleType) -> None:
    rng = np.random.default_rng(0)
    params = as_float64(tiny_module.init_params(rng))
    params["w2"] *= 100  # away from the near-uniform start, where gradients are tiny
    contexts = rng.integers(0, 256, (12, tiny_module.CONTEXT), dtype=np.uint8)
    contexts[0, 3] = contexts[0, 5]  # a byte seen twice in one context
    targets = rng.integers(0, 256, 12, dtype=np.uint8)
    assert_gradients_match(
        lambda p: tiny_module.sft_loss(p, contexts, targets), params, np.random.default_rng(1)
    )


def test_dpo_gradients_are_right(tiny_module: ModuleType) -> None:
    rng = np.random.default_rng(0)
    params = as_float64(tiny_module.init_params(rng))
    params["w2"] *= 100
    contexts = rng.integers(0, 256, (15, tiny_module.CONTEXT), dtype=np.uint8)
    targets = rng.integers(0, 256, 15, dtype=np.uint8)
    # Two pairs: chosen 0 (4 bytes), rejected 1 (3), chosen 2 (6), rejected 3 (2).
    owners = np.repeat(np.arange(4), [4, 3, 6, 2])
    reference = rng.normal(-20.0, 3.0, 4)

    def loss_and_grads(p: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        result = tiny_module.dpo_loss(p, contexts, targets, owners, reference, 0.5)
        return result.loss, result.grads

    assert_gradients_match(loss_and_grads, params, np.random.default_rng(1))


# ---------------------------------------------------------------------------------------------
# trl_train.py, without torch or TRL


def test_trl_check_accepts_a_good_config(tmp_path: Path) -> None:
    run = run_trainer(
        TRL,
        tmp_path,
        method="dpo",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        hyperparameters={"epochs": 2, "learning_rate": 1e-4, "lora_r": 8, "beta": 0.2},
        check=True,
    )
    assert run.returncode == 0, run.stderr
    assert not run.progress


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"lora_r": 0}}, "hyperparameters.lora_r"),
        ({"method": "ppo"}, '"method"'),
        ({"base_model": "tiny"}, '"tiny"'),
        ({"base_model": ""}, "'base_model'"),
    ],
)
def test_trl_check_rejects_a_bad_config(tmp_path: Path, config: dict[str, Any], named: str) -> None:
    run = run_trainer(
        TRL,
        tmp_path,
        method=config.get("method", "sft"),
        base_model=config.get("base_model", "Qwen/Qwen2.5-0.5B-Instruct"),
        hyperparameters=config.get("hyperparameters"),
        check=True,
    )
    assert run.returncode == 2
    assert run.error.startswith("tunelab trainer: ")
    assert named in run.error


def test_trl_checks_the_dataset_before_importing_ml_libraries(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", [*chat_rows(3), {"text": "x"}])
    run = run_trainer(
        TRL, tmp_path, method="dpo", dataset=dataset, base_model="Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert run.returncode == 2
    assert "dataset line 1 is missing" in run.error
    assert 'method "sft"' in run.error

    run = run_trainer(
        TRL, tmp_path, method="sft", dataset=dataset, base_model="Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert run.returncode == 2
    assert "dataset line 4 is a text row but line 1 is a messages row" in run.error


@pytest.mark.parametrize(
    ("available", "devices", "seen"),
    [(False, 0, "torch sees 0 (torch.cuda.is_available() is False"), (True, 1, "torch sees 1 (")],
)
def test_trl_fails_at_once_when_the_gpus_asked_for_are_not_there(
    tmp_path: Path, available: bool, devices: int, seen: str
) -> None:
    """A pod that asked for GPUs never trains on its CPU: with fewer GPUs than it asked for,
    trl_train stops before it loads anything but torch, and says what torch saw."""
    dataset = write_jsonl(tmp_path / "dataset.jsonl", chat_rows(3))
    ship(TRL, tmp_path)
    write_config(tmp_path, dataset=dataset, base_model="Qwen/Qwen2.5-0.5B-Instruct")
    stubs = fake_torch(tmp_path / "stubs", available=available, devices=devices)
    env = {
        **pod_environment(),
        "PYTHONPATH": str(stubs),
        "TUNELAB_GPU_COUNT": "2",
        "TUNELAB_DRIVER_CUDA": "12.2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tunelab_trainer.trl_train", "config.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 6  # which the bootstrap reports as gpu_unavailable
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("tunelab trainer: gpu_unavailable: the pod asked for 2 GPUs but ")
    assert seen in error
    assert "torch 2.8.0+cu128 was built for CUDA 12.8; the driver runs CUDA 12.2" in error
    # The stub has no transformers, datasets, peft or trl: nothing past torch was loaded.
    assert "ModuleNotFoundError" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Both: shipped as a package


def test_the_shipped_copy_is_what_runs(tmp_path: Path) -> None:
    """The venv has this repository's tunelab_trainer installed; from the pod's work directory
    the shipped copy must win, so that the tests above prove the shipped files suffice."""
    ship(TINY, tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tunelab_trainer.common as c, tunelab_trainer.tiny as t; "
            "print(c.__file__); print(t.__file__)",
        ],
        cwd=tmp_path,
        env=pod_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    package = (tmp_path / "tunelab_trainer").resolve()
    assert [Path(line).resolve() for line in done.stdout.split()] == [
        package / "common.py",
        package / "tiny.py",
    ]


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, anywhere in it: top-level names, except the package's
    own modules, which keep their full name (tunelab_trainer.common)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {_top_level(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name} has a relative import"
            assert node.module
            names.add(_top_level(node.module))
    return names


def _top_level(module: str) -> str:
    return module if module.startswith(f"{TRAINERS.name}.") else module.split(".")[0]


@pytest.mark.parametrize(
    ("trainer", "allowed"),
    [
        (TINY, {"numpy", "tunelab_trainer.common"}),
        (TRL, {"torch", "transformers", "trl", "peft", "datasets", "tunelab_trainer.common"}),
        (COMMON, set()),
        (TRAINERS / "__init__.py", set()),
    ],
)
def test_trainers_import_only_the_standard_library_and_their_ml_libraries(
    trainer: Path, allowed: set[str]
) -> None:
    foreign = imported_modules(trainer) - set(sys.stdlib_module_names) - allowed
    assert not foreign, f"{trainer.name} imports {sorted(foreign)}"


def test_trl_imports_its_ml_libraries_only_inside_functions() -> None:
    """--check and the dataset check run on a Python without torch or TRL."""
    tree = ast.parse(TRL.read_text(encoding="utf-8"))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"torch", "transformers", "trl", "peft", "datasets"}
