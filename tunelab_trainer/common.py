"""What both trainers share: the config, the dataset rows, the progress line, the exit status,
the GPUs the pod asked for (which the pod's environment check imports from here too).

Standard library only (Python 3.10+): it ships to the pod with the trainer that imports it, and
the pod has numpy or torch, never both for sure. The deploy service imports `Hyperparameters`
and `parse_hyperparameters` from here too, so a request is checked and given its defaults
exactly as the trainer reads them. The trainers differ in their default learning rate and in
the base models they accept, so `load_config` takes those as arguments.

Errors. A ConfigError means the config or the dataset cannot be trained as given (exit status
2); a TrainingError that training stopped for a reason its message gives in full (exit status
1); `run_main` turns either, or any other exception, into the one line on stderr,
"tunelab trainer: ...", and the exit status.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

METHODS = ("sft", "dpo")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
MAX_LINE_BYTES = 16 << 20

PROGRESS_PREFIX = "TUNELAB_PROGRESS "
PROGRESS_INTERVAL_S = 0.5
# The exit status when the GPUs the pod asked for are not usable: the trainer's, the pod's
# environment check's and the bootstrap's (which reports it as gpu_unavailable).
NO_GPU_STATUS = 6

# A chat conversation: (role, content) per message.
Turns = list[tuple[str, str]]


class ConfigError(Exception):
    """The config or the dataset cannot be trained as given (exit status 2)."""


class HyperparameterError(ConfigError):
    """A hyperparameter that is not a value of its type within its range."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class TrainingError(Exception):
    """Training stopped for a reason that the message gives in full (exit status 1)."""


class GpuUnavailable(TrainingError):
    """The pod asked for GPUs its torch cannot use (exit status NO_GPU_STATUS, which the
    bootstrap reports as gpu_unavailable)."""


def wanted_gpus() -> int:
    """The GPUs the pod asked for ($TUNELAB_GPU_COUNT); 0 when none or not a count."""
    value = os.environ.get("TUNELAB_GPU_COUNT", "").strip()
    return int(value) if value.isdigit() else 0


def note(message: str) -> None:
    print(f"tunelab trainer: note: {message}", file=sys.stderr, flush=True)


def print_progress(line: dict[str, Any]) -> None:
    print(PROGRESS_PREFIX + json.dumps(line, separators=(",", ":")), flush=True)


def run_main(work: Callable[[], None], explain: Callable[[str], str] = str) -> int:
    """Runs `work` and returns the exit status; a failure ends in one line on stderr.
    `explain` may add a hint to the message of an unexpected exception."""
    try:
        work()
    except ConfigError as error:
        print(f"tunelab trainer: {error}", file=sys.stderr, flush=True)
        return 2
    except TrainingError as error:
        print(f"tunelab trainer: {error}", file=sys.stderr, flush=True)
        return NO_GPU_STATUS if isinstance(error, GpuUnavailable) else 1
    except Exception as error:
        traceback.print_exc()
        message = explain(" ".join(str(error).split()) or type(error).__name__)
        print(f"tunelab trainer: training failed: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """How a run trains. The one definition: the deploy service checks a request with it and
    applies its defaults, and the trainer reads the config the pod receives back into it. The
    types and ranges are the API's (protos/tunelab/deploy/v1/deployments.proto)."""

    epochs: int = 1
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_steps: int = 0  # 0: no cap; otherwise the exact number of steps, whatever the epochs
    seed: int = 0
    max_seq_length: int = 1024
    lora_r: int = 16
    beta: float = 0.1
    warmup_ratio: float = 0.0


# Each trainer's defaults: the tiny model, trained from scratch, learns at a higher rate than a
# pretrained model fine-tuned with LoRA.
TINY_DEFAULTS = Hyperparameters(learning_rate=1e-3)
TRL_DEFAULTS = Hyperparameters()


@dataclass(frozen=True)
class Config:
    deployment_id: str
    method: str
    base_model: str
    dataset_path: Path
    output_dir: Path
    hyperparameters: Hyperparameters


_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "epochs": (1, 100),
    "batch_size": (1, 1024),
    "max_steps": (0, 10_000_000),
    "seed": (0, 2**31 - 1),
    "max_seq_length": (16, 32768),
    "lora_r": (1, 256),
}
# name: (low, high, low included, high included)
_NUMBER_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, 1.0, False, True),
    "beta": (0.0, 100.0, False, True),
    "warmup_ratio": (0.0, 0.5, True, True),
}


def _integer(name: str, value: object) -> int:
    low, high = _INTEGER_RANGES[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HyperparameterError(
            name, f"hyperparameters.{name} must be an integer from {low} to {high}, got {value!r}"
        )
    return value


def _number(name: str, value: object) -> float:
    low, high, low_in, high_in = _NUMBER_RANGES[name]
    is_bool = isinstance(value, bool)
    number = float(value) if isinstance(value, int | float) and not is_bool else math.nan
    if not (
        math.isfinite(number)
        and (number >= low if low_in else number > low)
        and (number <= high if high_in else number < high)
    ):
        bounds = f"{'>=' if low_in else '>'} {low:g} and {'<=' if high_in else '<'} {high:g}"
        raise HyperparameterError(
            name, f"hyperparameters.{name} must be a number {bounds}, got {value!r}"
        )
    return number


def parse_hyperparameters(raw: object, defaults: Hyperparameters) -> Hyperparameters:
    """Validates the hyperparameters; absent or null ones take their defaults. A value out of
    its range is a HyperparameterError that names it."""
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ConfigError(f"hyperparameters must be a JSON object, got {json_type(raw)}")
    known = {f.name for f in fields(Hyperparameters)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            note(f"ignoring unknown hyperparameter {name!r}")
        elif value is not None:
            values[name] = (
                _integer(name, value) if name in _INTEGER_RANGES else _number(name, value)
            )
    return replace(defaults, **values)


def load_config(
    path: str, *, defaults: Hyperparameters, check_base_model: Callable[[str], None]
) -> Config:
    """Reads and validates config.json; `check_base_model` raises a ConfigError for a base
    model that this trainer cannot train."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, not {json_type(raw)}")

    def text(key: str, required: bool = True) -> str:
        value = raw.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"config field {key!r} must be a non-empty string, got {value!r}")
        return value

    for key in raw:
        if key not in {f.name for f in fields(Config)}:
            note(f"ignoring unknown config field {key!r}")
    method = text("method")
    if method not in METHODS:
        raise ConfigError(f'config field "method" must be "sft" or "dpo", got {method!r}')
    base_model = text("base_model")
    check_base_model(base_model)
    return Config(
        deployment_id=text("deployment_id", required=False),
        method=method,
        base_model=base_model,
        dataset_path=Path(text("dataset_path")),
        output_dir=Path(text("output_dir")),
        hyperparameters=parse_hyperparameters(raw.get("hyperparameters"), defaults),
    )


def json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


# ---------------------------------------------------------------------------------------------
# Dataset


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number, row) for each non-blank line, one line in memory at a time."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(f"dataset {path} does not exist; check dataset_path") from None
    except OSError as error:
        raise ConfigError(f"cannot read dataset {path}: {error.strerror or error}") from None
    with handle:
        number = 0
        while line := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise ConfigError(
                    f"dataset line {number} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                    "split it into smaller rows"
                )
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise ConfigError(f"dataset line {number} is not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"dataset line {number} is not valid JSON ({error.msg}, column "
                    f"{error.colno}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"dataset line {number} is a JSON {json_type(row)}; each line must be "
                    "one JSON object"
                )
            yield number, row


def messages(number: int, name: str, value: object) -> Turns:
    """The (role, content) of each message of a non-empty list of chat messages."""
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f'dataset line {number}: "{name}" must be a non-empty list of '
            '{"role": ..., "content": ...} messages'
        )
    turns = []
    for index, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise ConfigError(
                f'dataset line {number}: {name}[{index}] must be an object with string "role" '
                'and "content"'
            )
        turns.append((role, content))
    return turns


def sft_content(number: int, row: dict[str, Any]) -> Turns | str:
    """An SFT row's chat turns ({"messages": [...]}, with an assistant turn) or its text
    ({"text": "..."}); any other row is a ConfigError that says what would fit."""
    if "messages" in row:
        turns = messages(number, "messages", row["messages"])
        if not any(role == "assistant" for role, _ in turns):
            raise ConfigError(
                f'dataset line {number} has no "assistant" message; SFT trains on the '
                "assistant turns"
            )
        return turns
    if "text" in row:
        text = row["text"]
        if not isinstance(text, str) or not text:
            raise ConfigError(f'dataset line {number}: "text" must be a non-empty string')
        return text
    if any(name in row for name in PREFERENCE_FIELDS):
        raise ConfigError(
            f"dataset line {number} is a preference pair (prompt, chosen, rejected), which "
            'method "dpo" trains; set method to "dpo", or give SFT rows {"messages": [...]} '
            'or {"text": "..."}'
        )
    raise ConfigError(
        f'dataset line {number} has neither "messages" nor "text" (it has '
        f'{", ".join(sorted(row)) or "no fields"}); method "sft" needs chat rows '
        '{"messages": [...]} or text rows {"text": "..."}'
    )


def preference_content(number: int, row: dict[str, Any]) -> list[Turns | str]:
    """A DPO row's prompt, chosen and rejected, each a string or chat turns; any other row is
    a ConfigError that says what would fit."""
    missing = [name for name in PREFERENCE_FIELDS if name not in row]
    if missing:
        hint = ""
        if "messages" in row or "text" in row:
            hint = '; it looks like an SFT row ("messages" or "text"), which method "sft" fits'
        raise ConfigError(
            f"dataset line {number} is missing {', '.join(repr(m) for m in missing)}, which "
            f'method "dpo" needs (rows {{"prompt", "chosen", "rejected"}}){hint}'
        )
    content: list[Turns | str] = []
    for name in PREFERENCE_FIELDS:
        value = row[name]
        if isinstance(value, str):
            content.append(value)
        elif isinstance(value, list):
            content.append(messages(number, name, value))
        else:
            raise ConfigError(
                f'dataset line {number}: "{name}" must be a string or a list of messages, '
                f"got {json_type(value)}"
            )
    return content
