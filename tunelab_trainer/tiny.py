"""Tunelab's tiny trainer: a byte-level language model trained with numpy on the CPU.

Run as `python -m tunelab_trainer.tiny config.json` from the directory that holds the
tunelab_trainer package: the deploy service ships the package's __init__.py, common.py and this
file there, so this module imports only the standard library, numpy and tunelab_trainer.common.
It trains the base model "tiny" only; real models are fine-tuned by trl_train.py on a GPU pod.

The model. Bytes are the tokens (256 of them; NUL pads the start of every sequence). It
predicts the next byte from the previous CONTEXT bytes: an embedding per byte, the CONTEXT
embeddings side by side, one tanh hidden layer, a softmax over the 256 bytes. Gradients are
derived by hand (backpropagation) and applied with Adam. The learning rate warms up linearly
over warmup_ratio of the steps, then decays linearly to zero, as the transformers Trainer does
by default.

SFT. Every trained byte is one example: the assistant turns of chat rows (a conversation is
rendered as "<|role|>\\n" + content + "\\n" per message, and only assistant content with its
closing newline is trained, as SFT trains on completions) or the whole text of {"text": ...}
rows. A step is a batch of batch_size such bytes; an epoch visits each of them once, in a
seeded random order.

DPO. A step is batch_size (prompt, chosen, rejected) rows, and its loss is
-log sigmoid(beta * ((log p(chosen) - log ref(chosen)) - (log p(rejected) - log ref(rejected)))),
where log p(x) sums the log-probabilities of the completion's bytes given the prompt under the
model being trained, and log ref(x) the same under a frozen reference model. The reference is
the model after a brief, fixed SFT warm-up on prompt + chosen (REF_WARMUP_STEPS steps at its
own learning rate, before the first progress line): DPO is meant to start from a model that
already imitates the data (with TRL, the instruct or SFT model, which is also the reference),
and the log-ratios of a random model are noise. The policy starts as a copy of the reference,
so the first step's loss is log 2.

Limits. Training text is capped at MAX_TEXT_BYTES: later rows are not read (a note on stderr
says so). Each row is cut to max_seq_length bytes (for DPO the prompt keeps at most half of
them, from its end, and each completion the rest, from its start). lora_r does not apply here.
With max_steps 0 a run stops after DEFAULT_MAX_STEPS steps, or once it has predicted
DEFAULT_MAX_BYTES bytes, even if epochs asks for more, so that it takes seconds; max_steps > 0
sets the number of steps exactly (as in transformers, it overrides epochs).

Output: output_dir/model.npz (the weights and the context size) and output_dir/metrics.json.
Progress: "TUNELAB_PROGRESS " + compact JSON on stdout, at most two lines a second plus the
first and the last step; loss (and for DPO the rewards) is the mean over the steps since the
previous line, learning_rate and grad_norm those of the step itself. Once the
files are written, one more line gives the final figures with "final": true (its loss is the
mean over the last 5% of the steps). Errors: one line on stderr, "tunelab trainer: ...", and
exit status 2 for a bad config or dataset, 1 for anything else, such as a loss that is no longer
finite ("the loss diverged").
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from tunelab_trainer.common import (
    PROGRESS_INTERVAL_S,
    TINY_DEFAULTS,
    Config,
    ConfigError,
    Hyperparameters,
    TrainingError,
    Turns,
    load_config,
    note,
    preference_content,
    print_progress,
    read_rows,
    run_main,
    sft_content,
)

# Small matrices run fastest on one thread, and one thread makes runs repeat bit for bit.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]
Doubles = npt.NDArray[np.float64]
Params = dict[str, Floats]

BASE_MODEL = "tiny"
DEFAULTS = TINY_DEFAULTS

CONTEXT = 8
EMBED = 24
HIDDEN = 192
VOCAB = 256
PAD = 0

MAX_TEXT_BYTES = 4 << 20
DEFAULT_MAX_STEPS = 6000
DEFAULT_MAX_BYTES = 500_000
REF_WARMUP_STEPS = 300
REF_WARMUP_BATCH = 64
REF_WARMUP_LR = 3e-3

POINT_FIGURES = frozenset({"learning_rate", "grad_norm"})


def log(message: str) -> None:
    print(f"tiny: {message}", file=sys.stderr, flush=True)


def check_base_model(base_model: str) -> None:
    if base_model != BASE_MODEL:
        raise ConfigError(
            f"base model {base_model!r} cannot be trained here: the local trainer only trains "
            f'"{BASE_MODEL}"; Hugging Face models are fine-tuned with TRL on a GPU pod'
        )


def check_loss(loss: float, step: int) -> None:
    """Stops a run whose loss is no longer finite: nothing it learns from then on is usable."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss diverged ({loss}) at step {step}: lower hyperparameters.learning_rate"
        )


# ---------------------------------------------------------------------------------------------
# Dataset


def _render(turns: Turns) -> str:
    return "".join(f"<|{role}|>\n{content}\n" for role, content in turns)


def sft_segments(number: int, row: dict[str, Any]) -> list[tuple[str, bool]]:
    """The row's text as (piece, trained) segments: assistant turns, or the whole text."""
    content = sft_content(number, row)
    if isinstance(content, str):
        return [(content, True)]
    segments: list[tuple[str, bool]] = []
    for role, text in content:
        segments.append((f"<|{role}|>\n", False))
        segments.append((text + "\n", role == "assistant"))
    return segments


def preference_texts(number: int, row: dict[str, Any]) -> tuple[str, str, str]:
    """The row's prompt, chosen and rejected texts; message lists are rendered as chat."""
    prompt, chosen, rejected = (
        value if isinstance(value, str) else _render(value)
        for value in preference_content(number, row)
    )
    return prompt, chosen, rejected


@dataclass
class Corpus:
    """Training sequences in one byte buffer; each sequence starts with CONTEXT NUL bytes.

    `trained` marks the bytes that SFT predicts; `spans` holds, for DPO, the [start, end) of
    the completion bytes of each sequence (chosen, rejected, chosen, ...).
    """

    data: bytearray = field(default_factory=bytearray)
    trained: bytearray = field(default_factory=bytearray)
    spans: list[int] = field(default_factory=list)
    rows: int = 0

    def add(self, pieces: list[tuple[bytes, bool]]) -> tuple[int, int]:
        self.data += bytes([PAD]) * CONTEXT
        self.trained += bytes(CONTEXT)
        start = len(self.data)
        for piece, trained in pieces:
            self.data += piece
            self.trained += (b"\x01" if trained else b"\x00") * len(piece)
        return start, len(self.data)


def load_corpus(config: Config) -> Corpus:
    corpus = Corpus()
    limit = config.hyperparameters.max_seq_length
    for number, row in read_rows(config.dataset_path):
        if len(corpus.data) >= MAX_TEXT_BYTES:
            note(
                f"read the dataset up to line {number - 1}: the tiny trainer uses at most "
                f"{MAX_TEXT_BYTES >> 20} MiB of text"
            )
            break
        corpus.rows += 1
        if config.method == "sft":
            pieces, room = [], limit
            for text, trained in sft_segments(number, row):
                piece = text.encode("utf-8")[:room]
                room -= len(piece)
                pieces.append((piece, trained))
            corpus.add(pieces)
        else:
            prompt, chosen, rejected = (t.encode("utf-8") for t in preference_texts(number, row))
            prompt = prompt[len(prompt) - min(len(prompt), limit // 2) :]
            for completion in (chosen, rejected):
                # The model sees CONTEXT bytes, so only the prompt's last ones are kept.
                completion = completion[: limit - len(prompt)]
                _, end = corpus.add([(prompt[-CONTEXT:], False), (completion, True)])
                corpus.spans += [end - len(completion), end]
    if corpus.rows == 0:
        raise ConfigError(
            f"dataset {config.dataset_path} has no rows; it needs one JSON object per line"
        )
    if not any(corpus.trained):
        raise ConfigError(
            "the dataset has nothing to train on: the trained text (assistant turns, texts or "
            "completions) is empty, or cut off by max_seq_length"
        )
    return corpus


# ---------------------------------------------------------------------------------------------
# Model


def init_params(rng: np.random.Generator) -> Params:
    def normal(shape: tuple[int, ...], scale: float) -> Floats:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "embedding": normal((VOCAB, EMBED), 1.0),
        "w1": normal((CONTEXT * EMBED, HIDDEN), 1.0 / math.sqrt(CONTEXT * EMBED)),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": normal((HIDDEN, VOCAB), 0.01),
        "b2": np.zeros(VOCAB, np.float32),
    }


@dataclass
class Forward:
    contexts: Bytes  # (n, CONTEXT) input bytes
    inputs: Floats  # (n, CONTEXT * EMBED) concatenated embeddings
    hidden: Floats  # (n, HIDDEN) tanh activations
    log_probs: Floats  # (n, VOCAB) log-softmax of the logits


def forward(params: Params, contexts: Bytes) -> Forward:
    inputs = params["embedding"][contexts].reshape(len(contexts), CONTEXT * EMBED)
    hidden = np.tanh(inputs @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return Forward(contexts, inputs, hidden, log_probs)


def backward(params: Params, fwd: Forward, d_logits: Floats) -> Params:
    """Gradients of the loss with respect to every parameter, given d loss / d logits."""
    d_hidden = (d_logits @ params["w2"].T) * (1.0 - fwd.hidden * fwd.hidden)
    d_inputs = (d_hidden @ params["w1"].T).reshape(len(fwd.contexts), CONTEXT, EMBED)
    d_embedding = np.zeros_like(params["embedding"])
    np.add.at(d_embedding, fwd.contexts, d_inputs)
    return {
        "embedding": d_embedding,
        "w1": fwd.inputs.T @ d_hidden,
        "b1": d_hidden.sum(axis=0),
        "w2": fwd.hidden.T @ d_logits,
        "b2": d_logits.sum(axis=0),
    }


def sft_loss(params: Params, contexts: Bytes, targets: Bytes) -> tuple[float, Params]:
    """Mean cross-entropy of the target bytes, and its gradients."""
    fwd = forward(params, contexts)
    rows = np.arange(len(targets))
    loss = -float(fwd.log_probs[rows, targets].mean())
    d_logits = np.exp(fwd.log_probs)
    d_logits[rows, targets] -= 1.0
    d_logits /= len(targets)
    return loss, backward(params, fwd, d_logits)


def sequence_log_probs(
    params: Params, contexts: Bytes, targets: Bytes, sequence: Ints, sequences: int
) -> tuple[Doubles, Forward]:
    """Sum of the target bytes' log-probabilities per sequence (sequence[i] owns byte i)."""
    fwd = forward(params, contexts)
    token = fwd.log_probs[np.arange(len(targets)), targets]
    sums = np.bincount(sequence, weights=token, minlength=sequences).astype(np.float64)
    return sums, fwd


@dataclass
class DpoResult:
    loss: float
    grads: Params
    accuracy: float
    margin: float


def dpo_loss(
    params: Params,
    contexts: Bytes,
    targets: Bytes,
    sequence: Ints,
    reference: Doubles,
    beta: float,
) -> DpoResult:
    """DPO loss over pairs; sequences 2k and 2k+1 are pair k's chosen and rejected."""
    sequences = len(reference)
    policy, fwd = sequence_log_probs(params, contexts, targets, sequence, sequences)
    rewards = beta * (policy - reference)
    margins = rewards[0::2] - rewards[1::2]
    loss = float(np.logaddexp(0.0, -margins).mean())
    # d loss / d margin = -sigmoid(-margin) / pairs, written with tanh to stay finite.
    d_margin = -0.5 * (1.0 - np.tanh(margins / 2.0)) / len(margins)
    d_sequence = np.empty(sequences)
    d_sequence[0::2] = beta * d_margin
    d_sequence[1::2] = -beta * d_margin
    d_token = d_sequence[sequence].astype(fwd.log_probs.dtype)[:, None]
    # d log p(target) / d logits = one_hot(target) - softmax
    d_logits = -np.exp(fwd.log_probs) * d_token
    d_logits[np.arange(len(targets)), targets] += d_token[:, 0]
    return DpoResult(
        loss=loss,
        grads=backward(params, fwd, d_logits),
        accuracy=float((margins > 0).mean()),
        margin=float(margins.mean()),
    )


class Adam:
    def __init__(self, params: Params, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.beta1, self.beta2, self.steps = beta1, beta2, 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, params: Params, grads: Params, learning_rate: float) -> None:
        self.steps += 1
        if self.steps % 100 == 0:
            # Moments of rarely seen bytes decay toward float32 denormals, which are slow.
            for moment in (*self.m.values(), *self.v.values()):
                moment[np.abs(moment) < 1e-30] = 0.0
        scale_m = 1.0 / (1.0 - self.beta1**self.steps)
        scale_v = 1.0 / (1.0 - self.beta2**self.steps)
        for name, grad in grads.items():
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1.0 - self.beta1) * grad
            v *= self.beta2
            v += (1.0 - self.beta2) * grad * grad
            params[name] -= (learning_rate * scale_m) * m / (np.sqrt(v * scale_v) + 1e-8)


def grad_norm(grads: Params) -> float:
    return math.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in grads.values()))


# ---------------------------------------------------------------------------------------------
# Training


class Progress:
    """Prints progress lines: the first and last step, and otherwise at most two a second."""

    def __init__(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last_print = -math.inf
        self.tail: deque[dict[str, float]] = deque(maxlen=max(1, total_steps // 20))
        self.step = 0

    def record(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        self.tail.append(metrics)
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        now = time.monotonic()
        if step in (1, self.total_steps) or now - self.last_print >= PROGRESS_INTERVAL_S:
            self._print(self._means(metrics, [self.sums], self.count))
            self.sums, self.count, self.last_print = {}, 0, now

    def final_metrics(self) -> dict[str, float]:
        """Means over the last 5% of the steps: steadier than the last step alone."""
        return self._means(self.tail[-1], self.tail, len(self.tail)) if self.tail else {}

    @staticmethod
    def _means(
        last: dict[str, float], figures: Iterable[dict[str, float]], count: int
    ) -> dict[str, float]:
        """Means of the figures, except the learning rate and gradient norm: the last ones."""
        means = dict(last)
        for name in last.keys() - POINT_FIGURES:
            means[name] = sum(f[name] for f in figures) / count
        return means

    def finish(self, metrics: dict[str, float]) -> None:
        self._print(metrics, final=True)

    def _print(self, metrics: dict[str, float], final: bool = False) -> None:
        line: dict[str, object] = {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.step / self.steps_per_epoch, 4),
        }
        line.update({name: float(f"{value:.6g}") for name, value in metrics.items()})
        if final:
            line["final"] = True
        print_progress(line)


def plan_steps(hyper: Hyperparameters, steps_per_epoch: int, bytes_per_step: float) -> int:
    """max_steps if set, else the steps of `epochs` epochs up to the default limits."""
    if hyper.max_steps > 0:
        return hyper.max_steps
    steps = max(1, math.ceil(hyper.epochs * steps_per_epoch))
    limit = max(1, min(DEFAULT_MAX_STEPS, int(DEFAULT_MAX_BYTES / max(bytes_per_step, 1.0))))
    if steps > limit:
        note(
            f"stopping after {limit} of the {steps} steps that {hyper.epochs:g} epoch(s) "
            "would take, so that the run takes seconds; set max_steps to train longer"
        )
        steps = limit
    return steps


def schedule(hyper: Hyperparameters, total: int) -> Callable[[int], float]:
    """Linear warm-up over warmup_ratio of the steps, then linear decay (steps count from 0)."""
    warmup = math.ceil(hyper.warmup_ratio * total)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return hyper.learning_rate * (step + 1) / warmup
        return hyper.learning_rate * (total - step) / (total - warmup)

    return learning_rate


def batches(items: int, batch_size: int, rng: np.random.Generator) -> Iterator[Ints]:
    """Endless batches of item indices, each epoch in a new random order."""
    while True:
        order = rng.permutation(items)
        for start in range(0, items, batch_size):
            yield order[start : start + batch_size]


def sft_steps(
    params: Params,
    data: Bytes,
    positions: Ints,
    batch_size: int,
    total: int,
    learning_rate: Callable[[int], float],
    rng: np.random.Generator,
) -> Iterator[dict[str, float]]:
    """Trains on the bytes at `positions`, yielding each step's figures."""
    windows = sliding_window_view(data, CONTEXT)
    adam = Adam(params)
    for step, batch in zip(range(total), batches(len(positions), batch_size, rng), strict=False):
        chosen = positions[batch]
        loss, grads = sft_loss(params, windows[chosen - CONTEXT], data[chosen])
        rate = learning_rate(step)
        norm = grad_norm(grads)
        adam.step(params, grads, rate)
        yield {"loss": loss, "learning_rate": rate, "grad_norm": norm}


def gather(spans: Ints, sequences: Ints) -> tuple[Ints, Ints]:
    """Positions of the completion bytes of `sequences`, and the index in it of each's owner."""
    starts = spans[sequences, 0]
    lengths = spans[sequences, 1] - starts
    owner = np.repeat(np.arange(len(sequences)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts[owner] + offsets, owner


def dpo_steps(
    params: Params,
    data: Bytes,
    spans: Ints,
    hyper: Hyperparameters,
    total: int,
    learning_rate: Callable[[int], float],
    rng: np.random.Generator,
) -> Iterator[dict[str, float]]:
    """DPO against a frozen copy of `params`, yielding each step's figures."""
    reference = {name: value.copy() for name, value in params.items()}
    windows = sliding_window_view(data, CONTEXT)
    adam = Adam(params)
    pairs = batches(len(spans) // 2, hyper.batch_size, rng)
    for step, batch in zip(range(total), pairs, strict=False):
        sequences = np.stack([2 * batch, 2 * batch + 1], axis=1).reshape(-1)
        positions, owner = gather(spans, sequences)
        contexts, targets = windows[positions - CONTEXT], data[positions]
        reference_sums, _ = sequence_log_probs(reference, contexts, targets, owner, len(sequences))
        result = dpo_loss(params, contexts, targets, owner, reference_sums, hyper.beta)
        rate = learning_rate(step)
        norm = grad_norm(result.grads)
        adam.step(params, result.grads, rate)
        yield {
            "loss": result.loss,
            "learning_rate": rate,
            "grad_norm": norm,
            "rewards_accuracy": result.accuracy,
            "rewards_margin": result.margin,
        }


def train(config: Config) -> None:
    hyper = config.hyperparameters
    started = time.monotonic()
    corpus = load_corpus(config)
    data = np.frombuffer(bytes(corpus.data), dtype=np.uint8)
    rng = np.random.default_rng(hyper.seed)
    params = init_params(rng)
    if config.method == "sft":
        positions = np.flatnonzero(np.frombuffer(bytes(corpus.trained), dtype=np.uint8))
        log(f"{corpus.rows} rows, {len(positions)} trained bytes")
        steps_per_epoch = math.ceil(len(positions) / hyper.batch_size)
        total = plan_steps(hyper, steps_per_epoch, hyper.batch_size)
        steps = sft_steps(
            params, data, positions, hyper.batch_size, total, schedule(hyper, total), rng
        )
    else:
        spans = np.array(corpus.spans, dtype=np.int64).reshape(-1, 2)
        completion_bytes = int((spans[:, 1] - spans[:, 0]).sum())
        log(f"{corpus.rows} preference pairs, {completion_bytes} completion bytes")
        chosen, _ = gather(spans, np.arange(0, len(spans), 2))
        warmup = [
            step["loss"]
            for step in sft_steps(
                params,
                data,
                chosen,
                REF_WARMUP_BATCH,
                REF_WARMUP_STEPS,
                lambda _: REF_WARMUP_LR,
                rng,
            )
        ]
        log(
            f"reference model: {REF_WARMUP_STEPS} SFT steps on prompt + chosen, loss "
            f"{warmup[0]:.3f} -> {warmup[-1]:.3f}"
        )
        steps_per_epoch = math.ceil(corpus.rows / hyper.batch_size)
        # Counted twice: a DPO step also runs the reference model over the same bytes.
        bytes_per_step = 2 * completion_bytes / corpus.rows * min(hyper.batch_size, corpus.rows)
        total = plan_steps(hyper, steps_per_epoch, bytes_per_step)
        steps = dpo_steps(params, data, spans, hyper, total, schedule(hyper, total), rng)
    del corpus

    log(f"training {total} steps ({steps_per_epoch} per epoch)")
    progress = Progress(total, steps_per_epoch)
    first_loss = math.nan
    for number, figures in enumerate(steps, 1):
        check_loss(figures["loss"], number)
        first_loss = figures["loss"] if number == 1 else first_loss
        progress.record(number, figures)
    final = progress.final_metrics()
    seconds = time.monotonic() - started

    config.output_dir.mkdir(parents=True, exist_ok=True)
    save: Callable[..., None] = np.savez  # its stubs reject **arrays
    save(config.output_dir / "model.npz", context=np.array(CONTEXT), **params)
    metrics = {
        "deployment_id": config.deployment_id,
        "base_model": BASE_MODEL,
        "method": config.method,
        "steps": total,
        "first_loss": first_loss,
        "final_loss": final["loss"],
        "final": final,
        "train_seconds": round(seconds, 3),
        "hyperparameters": {f.name: getattr(hyper, f.name) for f in fields(hyper)},
    }
    (config.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"loss {first_loss:.4f} -> {final['loss']:.4f} in {seconds:.2f} s")
    progress.finish(final)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("tunelab trainer: usage: python -m tunelab_trainer.tiny config.json", file=sys.stderr)
        return 2
    return run_main(
        lambda: train(load_config(argv[0], defaults=DEFAULTS, check_base_model=check_base_model))
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
