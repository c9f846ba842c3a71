"""A synthetic, seeded JSONL SFT dataset, and the in-process floor an upload cannot beat."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

CHUNK = 1 << 20
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in plain English.",
    "You are an expert software engineer. Explain your reasoning step by step.",
    "You are a friendly tutor who answers questions about science and history.",
]
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class Dataset:
    path: Path
    size_bytes: int
    rows: int
    sha256: str


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    """Pronounceable pseudo-words, some with the punctuation real sentences carry."""
    words = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "with", "as"]
    while len(words) < size:
        syllables = rng.randint(1, 4)
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        words.append(word + rng.choice(["", "", "", "", "", "", ",", "."]))
    return words


def make(path: Path, size_bytes: int, seed: int = 1234) -> Dataset:
    """Write rows to `path` until it holds at least `size_bytes`, hashing as it goes."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    digest = hashlib.sha256()
    written = rows = 0
    batch: list[bytes] = []
    with path.open("wb") as handle:
        while written < size_bytes:
            row = {
                "messages": [
                    {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
                    {
                        "role": "user",
                        "content": " ".join(rng.choices(vocabulary, k=rng.randint(10, 60))),
                    },
                    {
                        "role": "assistant",
                        "content": " ".join(rng.choices(vocabulary, k=rng.randint(30, 200))),
                    },
                ]
            }
            line = orjson.dumps(row) + b"\n"
            batch.append(line)
            written += len(line)
            rows += 1
            if len(batch) >= 1000 or written >= size_bytes:
                data = b"".join(batch)
                handle.write(data)
                digest.update(data)
                batch.clear()
    return Dataset(path, written, rows, digest.hexdigest())


def floor(path: Path) -> tuple[float, str, int]:
    """(MB/s, sha256, rows) of what the service must do anyway: hash and parse every row."""
    digest = hashlib.sha256()
    rows = 0
    rest = b""
    started = time.perf_counter()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line:
                    orjson.loads(line)
                    rows += 1
    if rest:
        orjson.loads(rest)
        rows += 1
    seconds = time.perf_counter() - started
    return path.stat().st_size / seconds / 1e6, digest.hexdigest(), rows
