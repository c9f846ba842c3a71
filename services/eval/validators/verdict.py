"""Running validators on a subject: one Outcome each, and the Verdict over all of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.eval.validators.config import ValidatorConfig
from services.eval.validators.params import ValidatorConfigError
from services.eval.validators.subject import Outcome, Subject, clamp_score


@dataclass(frozen=True, slots=True)
class Judged:
    """One validator's configuration and its outcome."""

    config: ValidatorConfig
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Verdict:
    """`score` is the weighted mean of the validators' scores. `passed` is true when every
    validator passed, or, when `evaluate` was given a `pass_score`, when the score reaches it
    (promptfoo's test-level threshold). `failed` names the validators that did not pass."""

    judged: tuple[Judged, ...]
    score: float
    passed: bool
    failed: tuple[str, ...]


def run_one(config: ValidatorConfig, subject: Subject) -> Outcome:
    """The validator's outcome; an unexpected error in a check is a failed outcome naming the
    error's type, never an exception out of a judgment."""
    try:
        finding = config.run(subject)
    except Exception as exc:
        return Outcome(False, 0.0, f"the validator failed: {type(exc).__name__}")
    score = clamp_score(finding.score)
    passed = not finding.failed and score >= config.threshold
    reason = finding.reason
    if not passed and not finding.failed and 0.0 < score < 1.0:
        reason += f"; score {score:.3f} is below the threshold {config.threshold:g}"
    return Outcome(passed, score, reason)


def evaluate(
    configs: Sequence[ValidatorConfig], subject: Subject, pass_score: float | None = None
) -> Verdict:
    if not configs:
        raise ValidatorConfigError("validators", "at least one validator is needed")
    if pass_score is not None and not 0.0 <= pass_score <= 1.0:
        raise ValidatorConfigError("pass_score", f"must be in [0, 1], not {pass_score!r}")
    judged = tuple(Judged(config, run_one(config, subject)) for config in configs)
    total = sum(item.config.weight for item in judged)
    score = clamp_score(sum(item.config.weight * item.outcome.score for item in judged) / total)
    failed = tuple(item.config.name for item in judged if not item.outcome.passed)
    passed = not failed if pass_score is None else score >= pass_score
    return Verdict(judged, score, passed, failed)
