"""Validators benchmark: `python -m bench validators [--subjects N] [--rounds R]`.

Judgments   evaluate() with a typical set of 8 validators (contains, case-insensitive;
            not_contains; regex; is_json; token_length; latency_ms; refusal; pii) over
            --subjects synthetic subjects (default 10,000: answers of 20 to 400 words, one in
            four a JSON object, some with an email or a refusal), judgments/s.
            Baseline: the same 8 checks written inline as the plainest Python that answers the
            same question (`in`, `re.search`, `json.loads`, a token count, comparisons, the
            same PII patterns without the Luhn step), no configs and no outcome objects. The
            ratio is the share of that bare speed the library keeps: it pays for NFC
            normalisation, case-folding, reasons and the weighted mean, and saves by counting
            tokens only up to the bound and skipping the email pattern when there is no "@",
            so it can exceed 1.
            --rounds rounds of (library, then baseline); medians printed.
5 MB        One 5 MB output through the same 8 validators plus Levenshtein and ROUGE-L against a
            5 MB reference (capped at 10,000 characters / 20,000 words) and a catastrophic
            regex (timeout 100 ms): seconds for the judgment.
Pure computation in this process; no service, no database. With --storage: the same
validators through the eval service, its storage and the tracing service, on PostgreSQL and
SQLite (bench/eval_storage.py; python -m bench validators --storage --help).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

from services.eval.validators import Subject, evaluate, parse_configs
from services.eval.validators.safety import REFUSAL_PHRASES

RESULTS = Path(__file__).resolve().parent / "results"

TYPICAL: list[dict[str, Any]] = [
    {"kind": "contains", "params": {"value": "paris", "case_sensitive": False}},
    {"kind": "not_contains", "params": {"value": "Lyon"}},
    {"kind": "regex", "params": {"pattern": r"\b\d{4}\b"}},
    {"kind": "is_json", "weight": 0.5},
    {"kind": "token_length", "params": {"max": 300}},
    {"kind": "latency_ms", "params": {"max": 2000}},
    {"kind": "refusal"},
    {"kind": "pii", "weight": 2},
]

# Words of the synthetic answers: a year for the regex, "Paris" for contains, punctuation.
SENTENCE = (
    "the capital of France is Paris and it was founded long before 1200 a river runs "
    "through it with museums bridges cafes , . ; : ( ) ! ?"
)
WORDS = SENTENCE.split()


def answer(rng: random.Random, index: int) -> str:
    """The synthetic answer number `index`: 20 to 400 words, one in four a JSON object, some a
    refusal or with an email."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400)))
    if index % 4 == 0:
        return json.dumps({"answer": text, "year": rng.randint(1000, 2100)})
    if index % 17 == 0:
        return "I'm sorry, but I cannot help with that. " + text
    if index % 13 == 0:
        return text + " write to someone@example.com"
    return text


def subjects(count: int, seed: int = 11) -> list[Subject]:
    rng = random.Random(seed)
    return [
        Subject(output=answer(rng, index), latency_ms=rng.uniform(100, 4000))
        for index in range(count)
    ]


YEAR = re.compile(r"\b\d{4}\b")
TOKEN = re.compile(r"\w+|[^\w\s]")
EMAIL = re.compile(r"[\w.%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
PHONE = re.compile(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){2,5}")
CARD = re.compile(r"\d(?:[ -]?\d){12,18}")


def bare(subject: Subject) -> list[bool]:
    """The same 8 questions, answered inline."""
    out = subject.output
    try:
        json.loads(out)
        is_json = True
    except ValueError:
        is_json = False
    lowered = out.lower()
    return [
        "paris" in lowered,
        "Lyon" not in out,
        YEAR.search(out) is not None,
        is_json,
        len(TOKEN.findall(out)) <= 300,
        subject.latency_ms is not None and subject.latency_ms <= 2000,
        not any(phrase in lowered for phrase in REFUSAL_PHRASES),
        not (EMAIL.search(out) or PHONE.search(out) or CARD.search(out)),
    ]


def _rate(run: Any, items: list[Subject]) -> float:
    started = time.perf_counter()
    for subject in items:
        run(subject)
    return len(items) / (time.perf_counter() - started)


def judgments(count: int, rounds: int) -> dict[str, Any]:
    configs = parse_configs(TYPICAL)
    items = subjects(count)
    passed = sum(evaluate(configs, subject).passed for subject in items)  # untimed warm-up
    done = []
    for _ in range(rounds):
        library = _rate(lambda subject: evaluate(configs, subject), items)
        baseline = _rate(bare, items)
        done.append((library, baseline))
    library = statistics.median(rate for rate, _ in done)
    baseline = statistics.median(rate for _, rate in done)
    return {
        "subjects": count,
        "passed": passed,
        "library_judgments_s": round(library),
        "baseline_judgments_s": round(baseline),
        "ratio": round(library / baseline, 3),
    }


def five_megabytes() -> dict[str, Any]:
    rng = random.Random(5)
    output = " ".join(rng.choice(WORDS) for _ in range(1_200_000))[:5_000_000]
    configs = parse_configs(
        [
            *TYPICAL,
            {"kind": "levenshtein"},
            {"kind": "rouge_l"},
            {"kind": "regex", "name": "catastrophic", "params": {"pattern": "(a+)+$"}},
        ]
    )
    subject = Subject(output=output + " " + "a" * 50_000 + "!", reference=output, latency_ms=1)
    started = time.perf_counter()
    verdict = evaluate(configs, subject)
    return {
        "chars": len(subject.output),
        "validators": len(configs),
        "seconds": round(time.perf_counter() - started, 3),
        "failed": list(verdict.failed),
    }


def main(argv: list[str]) -> int:
    if "--storage" in argv:
        from bench.eval_storage import main as with_storage

        return with_storage([arg for arg in argv if arg != "--storage"])
    parser = argparse.ArgumentParser(prog="python -m bench validators", description=__doc__)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--storage",
        action="store_true",
        help="measure through the services and their databases instead "
        "(python -m bench validators --storage --help)",
    )
    args = parser.parse_args(argv)
    if args.subjects <= 0 or args.rounds <= 0:
        parser.error("the counts must be positive")
    results = {"judgments": judgments(args.subjects, args.rounds), "five_mb": five_megabytes()}
    j, big = results["judgments"], results["five_mb"]
    print(
        f"validators benchmark: 8 validators x {j['subjects']:,} subjects, median of {args.rounds}"
    )
    print(
        f"judgments  library {j['library_judgments_s']:8,}/s   inline checks "
        f"{j['baseline_judgments_s']:8,}/s   ratio {j['ratio']:.2f}   ({j['passed']:,} passed)"
    )
    print(
        f"5 MB       {big['chars']:,} characters, {big['validators']} validators: "
        f"{big['seconds']:.2f} s   failed: {', '.join(big['failed'])}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "validators.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"(figures in {RESULTS / 'validators.json'})")
    return 0
