"""Tunelab's GPU trainer: LoRA fine-tuning of a Hugging Face model with TRL, by SFT or DPO.

Run as `python -m tunelab_trainer.trl_train config.json` on a GPU pod, from the directory that
holds the tunelab_trainer package: the deploy service ships the package's __init__.py,
common.py and this file there, next to an install of torch, transformers, trl, peft and
datasets. `python -m tunelab_trainer.trl_train --check config.json` validates the config and
exits, and needs none of them: they are imported only once training starts. At the top level
this module imports only the standard library and tunelab_trainer.common.

Before anything is downloaded the dataset is read through once, a line at a time, so that a
dataset that does not fit the method fails at once with the line at fault: SFT takes chat rows
{"messages": [...]} or text rows {"text": "..."}, DPO takes {"prompt", "chosen", "rejected"},
each a string or (TRL's conversational format) a list of messages, and one dataset keeps to one
shape. SFTTrainer or DPOTrainer then trains a LoRA adapter (rank lora_r, alpha 2 * lora_r, on
all linear layers) in bf16 where the GPU supports it, float32 otherwise. DPO's reference model
is the base model itself (PEFT disables the adapter to compute it), as TRL does with a
peft_config. Chat rows need a chat template: a tokenizer without one gets a ChatML one.

On a pod that asked for GPUs ($TUNELAB_GPU_COUNT, set by the bootstrap) torch must see them
all: otherwise training stops at once with a "gpu_unavailable: ..." error that says what torch
saw, never a run on the CPU while the GPUs bill. Without GPUs asked for it trains where it can
(`make test-trl` runs it on the CPU).

Pinned for the GPU pods (services/deploy/pod/stack.py): transformers 4.57.6, trl 0.24.0, peft
0.17.1, datasets 4.3.0, accelerate 1.11.0 with torch 2.8.0; every call below was checked
against those releases, and the fallbacks keep older and newer ones working.

The hyperparameters map onto TRL's config (SFTConfig or DPOConfig, both transformers
TrainingArguments): epochs -> num_train_epochs, batch_size -> per_device_train_batch_size,
max_steps (0: unset) -> max_steps, max_seq_length -> max_length (max_seq_length before TRL
0.16), warmup_ratio -> warmup_ratio (warmup_steps, a float below 1 being a ratio, from
transformers 5, which drops warmup_ratio), learning_rate, seed, beta as they are. Field names
are looked up on the config class, so older and newer TRL releases both work.

Output: the adapter and the tokenizer (trainer.save_model) and metrics.json, in output_dir.
Progress: "TUNELAB_PROGRESS " + compact JSON on stdout for the first and the last step and at
most two lines a second in between, from the trainer's logs (logged every step); once the
adapter is saved, one more line repeats the last figures with "final": true. Errors: one line
on stderr, "tunelab trainer: ...", and exit status 2 for a bad config or dataset, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from typing import Any

from tunelab_trainer.common import (
    PREFERENCE_FIELDS,
    PROGRESS_INTERVAL_S,
    TRL_DEFAULTS,
    Config,
    ConfigError,
    GpuUnavailable,
    load_config,
    note,
    preference_content,
    print_progress,
    read_rows,
    run_main,
    sft_content,
    wanted_gpus,
)

TINY_MODEL = "tiny"
DEFAULTS = TRL_DEFAULTS
LORA_DROPOUT = 0.05
# Trainer log key -> progress line key
LOG_FIGURES = {
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "rewards/accuracies": "rewards_accuracy",
    "rewards/margins": "rewards_margin",
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def check_base_model(base_model: str) -> None:
    if base_model == TINY_MODEL:
        raise ConfigError(
            f'base model "{TINY_MODEL}" is the local CPU trainer\'s toy model; on a GPU pod '
            "give a Hugging Face model id, such as Qwen/Qwen2.5-0.5B-Instruct"
        )
    if any(c.isspace() for c in base_model):
        raise ConfigError(f"base model {base_model!r} is not a Hugging Face model id")


# ---------------------------------------------------------------------------------------------
# Dataset


def row_shape(method: str, number: int, row: dict[str, Any]) -> str:
    """Checks that the row fits the method; returns its shape: messages, text, or the
    preference pair's strings or conversational."""
    if method == "sft":
        return "text" if isinstance(sft_content(number, row), str) else "messages"
    kinds = {
        "strings" if isinstance(value, str) else "conversational"
        for value in preference_content(number, row)
    }
    if len(kinds) > 1:
        raise ConfigError(
            f"dataset line {number} mixes strings and message lists; prompt, chosen and "
            "rejected must all be strings or all be lists of messages"
        )
    return kinds.pop()


@dataclass(frozen=True)
class DatasetInfo:
    rows: int
    shape: str  # messages, text, strings or conversational

    @property
    def columns(self) -> list[str]:
        return list(PREFERENCE_FIELDS) if self.method == "dpo" else [self.shape]

    @property
    def method(self) -> str:
        return "dpo" if self.shape in ("strings", "conversational") else "sft"

    @property
    def conversational(self) -> bool:
        return self.shape in ("messages", "conversational")


def scan_dataset(config: Config) -> DatasetInfo:
    """Reads the whole dataset once: every row must fit the method, all in one shape."""
    rows, shape, first = 0, "", 0
    for number, row in read_rows(config.dataset_path):
        this = row_shape(config.method, number, row)
        if not shape:
            shape, first = this, number
        elif this != shape:
            raise ConfigError(
                f"dataset line {number} is a {this} row but line {first} is a {shape} row; "
                "keep one shape in a dataset"
            )
        rows += 1
    if rows == 0:
        raise ConfigError(
            f"dataset {config.dataset_path} has no rows; it needs one JSON object per line"
        )
    return DatasetInfo(rows, shape)


# ---------------------------------------------------------------------------------------------
# Training


def version_of(module: Any) -> tuple[int, int]:
    """(major, minor) of a module's __version__, such as (4, 56) for "4.56.0.dev0"."""
    numbers = []
    for piece in str(getattr(module, "__version__", "0.0")).split(".")[:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        numbers.append(int(digits or 0))
    return numbers[0], numbers[1] if len(numbers) > 1 else 0


def training_arguments(
    config_class: Any, config: Config, bf16: bool, transformers_version: tuple[int, int]
) -> dict[str, Any]:
    """Keyword arguments for SFTConfig or DPOConfig, named as this TRL release names them."""
    names = {f.name for f in dataclasses.fields(config_class)}
    hyper = config.hyperparameters
    arguments: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "num_train_epochs": hyper.epochs,
        "learning_rate": hyper.learning_rate,
        "per_device_train_batch_size": hyper.batch_size,
        "max_steps": hyper.max_steps if hyper.max_steps > 0 else -1,
        "seed": hyper.seed,
        "bf16": bf16,  # TRL turns bf16 on by default, which fails on GPUs without it
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    arguments["max_length" if "max_length" in names else "max_seq_length"] = hyper.max_seq_length
    if "warmup_ratio" in names and transformers_version < (5, 0):
        arguments["warmup_ratio"] = hyper.warmup_ratio
    elif hyper.warmup_ratio > 0:
        arguments["warmup_steps"] = hyper.warmup_ratio  # below 1: a ratio of the steps
    if config.method == "dpo":
        arguments["beta"] = hyper.beta
        if "max_prompt_length" in names:
            arguments["max_prompt_length"] = hyper.max_seq_length // 2
    unknown = sorted(set(arguments) - names)
    if unknown:
        note(f"this TRL release has no {', '.join(unknown)}; leaving them out")
    return {name: value for name, value in arguments.items() if name in names}


class Progress:
    """Turns the trainer's logs into progress lines: first and last step, and at most two a
    second in between."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self.printed_step = 0
        self.printed_at = -math.inf

    def log(self, step: int, total_steps: int, epoch: float | None, logs: dict[str, Any]) -> None:
        if "loss" not in logs:
            return  # the end-of-training summary (train_loss, train_runtime, ...)
        line: dict[str, Any] = {"step": step, "total_steps": total_steps}
        if epoch is not None:
            line["epoch"] = round(float(epoch), 4)
        for key, name in LOG_FIGURES.items():
            value = logs.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                line[name] = float(f"{float(value):.6g}")
        self.last = line
        now = time.monotonic()
        if (
            self.printed_step == 0
            or step >= total_steps
            or now - self.printed_at >= PROGRESS_INTERVAL_S
        ):
            self._print(line)
            self.printed_step, self.printed_at = step, now

    def finish(self, step: int, total_steps: int) -> None:
        line = self.last or {"step": step, "total_steps": total_steps}
        self._print({**line, "step": step, "total_steps": max(total_steps, step), "final": True})

    @staticmethod
    def _print(line: dict[str, Any]) -> None:
        print_progress(line)


def progress_callback(transformers: Any, progress: Progress) -> Any:
    """A transformers TrainerCallback that hands every log to `progress`."""

    class TunelabProgress(transformers.TrainerCallback):  # type: ignore[misc]
        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if state.is_world_process_zero and logs:
                progress.log(state.global_step, state.max_steps, state.epoch, dict(logs))

    return TunelabProgress()


def use_cuda(torch: Any, wanted: int) -> bool:
    """Whether to train on CUDA. A pod that asked for `wanted` GPUs and cannot use them all is
    a TrainingError (gpu_unavailable) that says what torch saw."""
    available = bool(torch.cuda.is_available())
    count = int(torch.cuda.device_count()) if available else 0
    if wanted > 0 and count < wanted:
        built = torch.version.cuda or "none (a CPU build)"
        driver = os.environ.get("TUNELAB_DRIVER_CUDA") or "unknown"
        raise GpuUnavailable(
            f"gpu_unavailable: the pod asked for {wanted} GPU{'s' if wanted != 1 else ''} but "
            f"torch sees {count} (torch.cuda.is_available() is {available}; torch "
            f"{torch.__version__} was built for CUDA {built}; the driver runs CUDA {driver})"
        )
    if not available:
        note("no CUDA device: training on the CPU, which is very slow")
    return available


def train(config: Config, dataset_info: DatasetInfo) -> None:
    import torch

    cuda = use_cuda(torch, wanted_gpus())  # before anything else is loaded

    import datasets
    import peft
    import transformers
    import trl

    hyper = config.hyperparameters
    transformers.set_seed(hyper.seed)
    bf16 = cuda and bool(torch.cuda.is_bf16_supported())

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(config.base_model)
    except OSError as error:
        raise ConfigError(
            f"cannot load base model {config.base_model!r}: {' '.join(str(error).split())}; "
            "check the model id (gated models also need HF_TOKEN)"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dataset_info.conversational and not getattr(tokenizer, "chat_template", None):
        note("the tokenizer has no chat template; using ChatML")
        tokenizer.chat_template = CHATML_TEMPLATE
    dtype_keyword = "dtype" if version_of(transformers) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        config.base_model, **{dtype_keyword: torch.bfloat16 if bf16 else torch.float32}
    )

    dataset = datasets.load_dataset("json", data_files=str(config.dataset_path), split="train")
    dataset = dataset.select_columns(dataset_info.columns)
    lora = peft.LoraConfig(
        r=hyper.lora_r,
        lora_alpha=2 * hyper.lora_r,
        lora_dropout=LORA_DROPOUT,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    if config.method == "sft":
        config_class, trainer_class = trl.SFTConfig, trl.SFTTrainer
    else:
        config_class, trainer_class = trl.DPOConfig, trl.DPOTrainer
    args = config_class(**training_arguments(config_class, config, bf16, version_of(transformers)))
    progress = Progress()
    parameters = inspect.signature(trainer_class.__init__).parameters
    tokenizer_keyword = "processing_class" if "processing_class" in parameters else "tokenizer"
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        peft_config=lora,
        callbacks=[progress_callback(transformers, progress)],
        **{tokenizer_keyword: tokenizer},
    )
    # With tqdm off, the Trainer prints every log dict to stdout; the progress lines suffice.
    trainer.remove_callback(transformers.PrinterCallback)
    started = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - started

    config.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(config.output_dir))
    state = trainer.state
    metrics = {
        "deployment_id": config.deployment_id,
        "base_model": config.base_model,
        "method": config.method,
        "rows": dataset_info.rows,
        "steps": int(state.global_step),
        "train_loss": float(result.training_loss),
        "final": progress.last,
        "train_seconds": round(seconds, 3),
        "bf16": bf16,
        "versions": {
            module.__name__: str(getattr(module, "__version__", "?"))
            for module in (torch, transformers, trl, peft, datasets)
        },
        "hyperparameters": {f.name: getattr(hyper, f.name) for f in fields(hyper)},
    }
    (config.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    progress.finish(int(state.global_step), int(state.max_steps))


def main(argv: list[str]) -> int:
    check_only = argv[:1] == ["--check"]
    if check_only:
        argv = argv[1:]
    if len(argv) != 1 or argv[0].startswith("-"):
        print(
            "tunelab trainer: usage: python -m tunelab_trainer.trl_train [--check] config.json",
            file=sys.stderr,
        )
        return 2

    def work() -> None:
        config = load_config(argv[0], defaults=DEFAULTS, check_base_model=check_base_model)
        if check_only:
            print(f"tunelab trainer: config {argv[0]} is valid", file=sys.stderr)
            return
        dataset_info = scan_dataset(config)
        print(
            f"tunelab trainer: {dataset_info.rows} rows ({dataset_info.shape}); training "
            f"{config.base_model} with {config.method}",
            file=sys.stderr,
            flush=True,
        )
        train(config, dataset_info)

    return run_main(work, explain=explain_failure)


def explain_failure(message: str) -> str:
    if "out of memory" in message.lower():
        message += "; lower batch_size or max_seq_length, or pick a bigger GPU"
    return message


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
