"""make test-trl: the GPU pods' trainer, trl_train, end to end on this machine's CPU with the
pods' pinned transformers, trl, peft, datasets and accelerate.

A scratch virtual environment, not the project's (TUNELAB_TRL_VENV, default /tmp/tunelab-trl),
gets torch from this machine's pip (TUNELAB_TRL_TORCH, default 2.13.0: on the development
machines that is the CPU build lying on their disk; the pods run the image's torch 2.8.0), then
the pinned packages with --no-deps, then their dependencies with torch held where it is. A tiny
Llama model is built there from random weights, with a byte-level BPE tokenizer trained on the
rows (nothing comes from a hub: none is reachable), and trl_train runs as the pod runs it (its
shipped files in a work directory, `python -m tunelab_trainer.trl_train config.json`) for SFT on
chat rows and DPO on preference pairs, as strings and as conversations. Each must exit 0, print
its progress lines to the final one, and save a LoRA adapter in which every layer has learnt
something (every lora_B moved from its zero start).

    python scripts/trl_on_cpu.py [--keep]      (--keep: leave the work directories)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

PROGRESS = "TUNELAB_PROGRESS "
ROWS = 40
HYPERPARAMETERS = {
    "epochs": 1,
    "batch_size": 4,
    "max_steps": 8,
    "max_seq_length": 128,
    "lora_r": 4,
    "learning_rate": 1e-3,
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def datasets() -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """name -> (method, rows)."""

    def turn(role: str, content: str) -> dict[str, str]:
        return {"role": role, "content": content}

    sums = [(i, f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(ROWS)]
    return {
        "sft-chat": (
            "sft",
            [{"messages": [turn("user", q), turn("assistant", a)]} for _, q, a in sums],
        ),
        "dpo-strings": (
            "dpo",
            [{"prompt": q, "chosen": a, "rejected": f"It is {2 * i + 1}."} for i, q, a in sums],
        ),
        "dpo-conversational": (
            "dpo",
            [
                {
                    "prompt": [turn("user", q)],
                    "chosen": [turn("assistant", a)],
                    "rejected": [turn("assistant", f"It is {2 * i + 1}.")],
                }
                for i, q, a in sums
            ],
        ),
    }


# ---------------------------------------------------------------------------------------------
# In the scratch environment


def build_model(folder: Path, texts: list[str]) -> None:
    """A tiny randomly initialised Llama and a byte-level BPE tokenizer trained on `texts`,
    saved as a Hugging Face model folder."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    special = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*texts, "user assistant system\n"], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",  # noqa: S106 (a token of the vocabulary, not a secret)
        eos_token="<|im_end|>",  # noqa: S106
    )
    tokenizer.save_pretrained(folder)
    transformers.set_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def adapter_layers(folder: Path) -> tuple[int, int]:
    """(lora_B matrices in the saved adapter, those no longer all zero)."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    moved = [bool(w.abs().sum() > 0) for name, w in weights.items() if "lora_B" in name]
    return len(moved), sum(moved)


def inside(argv: list[str]) -> int:
    if argv[0] == "--build":
        texts = [line for path in argv[2:] for line in Path(path).read_text().splitlines()]
        build_model(Path(argv[1]), texts)
    elif argv[0] == "--adapter":
        print(json.dumps(adapter_layers(Path(argv[1]))))
    return 0


# ---------------------------------------------------------------------------------------------
# The driver, on the project's Python


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, **kwargs)


def prepare(folder: Path, torch: str, requirements: tuple[str, ...]) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        venv.create(folder, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    found = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    installed = found.stdout.strip() if found.returncode == 0 else ""
    if installed.split("+")[0] != torch:
        run([*pip, f"torch=={torch}"])
        installed = run(
            [str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True
        ).stdout.strip()
    run([*pip, "--no-deps", *requirements])
    held = folder / "torch-held.txt"
    held.write_text(f"torch=={installed}\n")
    run([*pip, "--constraint", str(held), *requirements])
    run([str(python), "-m", "pip", "check"])
    names = ["torch", *(requirement.split("==")[0] for requirement in requirements)]
    listed = (
        "import importlib.metadata as m; "
        f"print(', '.join(n + ' ' + m.version(n) for n in {names!r}))"
    )
    print("installed:", run([str(python), "-c", listed], capture_output=True).stdout.strip())
    return python


def train(python: Path, work: Path, model: Path, name: str, method: str) -> dict[str, Any]:
    from services.deploy.pod import render

    for path, text in render.trainer("trl_train").files:  # what the pod is sent
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    config = {
        "deployment_id": f"dep_cpu_{name}",
        "method": method,
        "base_model": str(model),
        "dataset_path": str(work / "dataset.jsonl"),
        "output_dir": str(work / "output"),
        "hyperparameters": HYPERPARAMETERS,
    }
    (work / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TUNELAB_GPU_COUNT")}
    started = time.monotonic()
    done = subprocess.run(
        [str(python), "-m", "tunelab_trainer.trl_train", "config.json"],
        cwd=work,
        env={**env, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        print(done.stdout + done.stderr)
        raise SystemExit(f"{name}: trl_train exited with status {done.returncode}")
    progress = [
        json.loads(line[len(PROGRESS) :])
        for line in done.stdout.splitlines()
        if line.startswith(PROGRESS)
    ]
    final = progress[-1] if progress else {}
    if not final.get("final") or final["step"] != HYPERPARAMETERS["max_steps"]:
        raise SystemExit(f"{name}: no final progress line at the last step: {progress}")
    metrics = json.loads((work / "output" / "metrics.json").read_text())
    layers, moved = json.loads(
        run([str(python), __file__, "--adapter", str(work / "output")], capture_output=True).stdout
    )
    if not layers or moved != layers:
        raise SystemExit(f"{name}: {moved} of {layers} LoRA layers learnt anything")
    return {
        "run": name,
        "steps": metrics["steps"],
        "first loss": progress[0]["loss"],
        "last loss": final["loss"],
        "lora layers trained": f"{moved}/{layers}",
        "seconds": round(seconds, 1),
        "versions": metrics["versions"],
    }


def main(argv: list[str]) -> int:
    from services.deploy.pod import stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the work directories")
    args = parser.parse_args(argv)
    scratch = Path(os.environ.get("TUNELAB_TRL_VENV") or Path(tempfile.gettempdir(), "tunelab-trl"))
    torch = os.environ.get("TUNELAB_TRL_TORCH", "2.13.0")
    python = prepare(scratch, torch, stack.REQUIREMENTS)
    root = Path(tempfile.mkdtemp(prefix="tunelab-trl-"))
    try:
        files = []
        for name, (_, rows) in datasets().items():
            (root / name).mkdir()
            path = root / name / "dataset.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            files.append(str(path))
        model = root / "model"
        run([str(python), __file__, "--build", str(model), *files], env={**os.environ, **OFFLINE})
        results = [
            train(python, root / name, model, name, method)
            for name, (method, _) in datasets().items()
        ]
    finally:
        if args.keep:
            print(f"work directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    pinned = dict(requirement.split("==") for requirement in stack.REQUIREMENTS)
    for result in results:
        versions = result.pop("versions")
        wrong = {k: v for k, v in versions.items() if k in pinned and v != pinned[k]}
        if wrong:
            raise SystemExit(f"{result['run']} ran with unpinned versions: {wrong}")
        print("ok:", ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in ("--build", "--adapter"):
        sys.exit(inside(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
