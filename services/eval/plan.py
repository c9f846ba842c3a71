"""An evaluation's configuration, checked: the validators, the judge, groundedness.

Built from the request's messages (or a rule's stored EvalConfig); every mistake is an
INVALID_ARGUMENT naming the field. `key()` is the configuration's identity: a span judged
under the same key is not judged again unless asked.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from services.common.errors import invalid_argument
from services.eval.validators import ValidatorConfig, ValidatorConfigError, parse_configs
from tunelab.eval.v1 import judgments_pb2 as jpb

DEFAULT_RUBRIC = (
    "Grade how well the answer serves the input: is it correct, relevant, complete and clear? "
    "A wrong or unsupported statement weighs more than a missing detail."
)
DEFAULT_SCALE = (1, 10)
DEFAULT_JUDGE_THRESHOLD = 0.5
DEFAULT_GROUNDEDNESS_THRESHOLD = 0.7
MAX_RUBRIC_CHARS = 10_000
MAX_REFERENCE_CHARS = 200_000
MAX_VALIDATORS = 50
KEY_NAME = re.compile(r"[a-z0-9_-]{1,64}")


@dataclass(frozen=True)
class JudgeSpec:
    base_url: str
    model: str
    key_name: str
    rubric: str
    scale: tuple[int, int]
    threshold: float
    weight: float


@dataclass(frozen=True)
class GroundednessSpec:
    method: jpb.GroundednessMethod.ValueType
    threshold: float
    weight: float


@dataclass(frozen=True)
class Plan:
    validators: tuple[ValidatorConfig, ...]
    judge: JudgeSpec | None
    groundedness: GroundednessSpec | None
    reference: str

    def key(self) -> str:
        """SHA-256 over everything that changes a result (validator names are labels and
        are left out, as ValidatorConfig.config_key does)."""
        canonical = json.dumps(
            {
                "validators": sorted(v.config_key() for v in self.validators),
                "judge": self.judge.__dict__ if self.judge else None,
                "groundedness": self.groundedness.__dict__ if self.groundedness else None,
                "reference": self.reference,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_config(self, validators: Sequence[jpb.Validator]) -> jpb.EvalConfig:
        """The configuration as stored with a rule (the request's own messages, checked)."""
        config = jpb.EvalConfig(validators=validators)
        if self.judge:
            j = self.judge
            config.judge.CopyFrom(
                jpb.Judge(
                    base_url=j.base_url,
                    model=j.model,
                    key_name=j.key_name,
                    rubric=j.rubric,
                    scale_min=j.scale[0],
                    scale_max=j.scale[1],
                    threshold=j.threshold,
                    weight=j.weight,
                )
            )
        if self.groundedness:
            g = self.groundedness
            config.groundedness.CopyFrom(
                jpb.GroundednessCheck(method=g.method, threshold=g.threshold, weight=g.weight)
            )
        return config


def _fraction(value: float, field: str) -> float:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise invalid_argument(field, f"{field} must be in [0, 1], not {value:g}")
    return value


def _weight(value: float, field: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise invalid_argument(field, f"{field} must be greater than 0, not {value:g}")
    return value


def _validator_dict(v: jpb.Validator) -> dict[str, Any]:
    raw: dict[str, Any] = {"kind": v.kind}
    if v.name:
        raw["name"] = v.name
    if v.HasField("params"):
        raw["params"] = json_format.MessageToDict(v.params)
    if v.HasField("weight"):
        raw["weight"] = v.weight
    if v.HasField("threshold"):
        raw["threshold"] = v.threshold
    return raw


def parse_validators(validators: Sequence[jpb.Validator]) -> tuple[ValidatorConfig, ...]:
    if not validators:
        return ()
    if len(validators) > MAX_VALIDATORS:
        raise invalid_argument(
            "validators", f"at most {MAX_VALIDATORS} validators, not {len(validators)}"
        )
    try:
        configs = parse_configs([_validator_dict(v) for v in validators])
    except ValidatorConfigError as exc:
        raise invalid_argument(exc.field, str(exc)) from None
    names = {c.name for c in configs}
    for reserved in ("judge", "groundedness"):
        if reserved in names:
            raise invalid_argument(
                "validators", f"{reserved!r} names the {reserved}'s own check: rename the validator"
            )
    return tuple(configs)


def parse_judge(judge: jpb.Judge, has_operator_judge: bool) -> JudgeSpec:
    if judge.base_url and not judge.model:
        raise invalid_argument("judge.model", "judge.model is required with judge.base_url")
    if not judge.base_url and not has_operator_judge:
        raise invalid_argument(
            "judge.base_url",
            "no judge is configured on this installation: give judge.base_url (an "
            "OpenAI-compatible endpoint, e.g. https://api.openai.com/v1) and judge.model",
        )
    if len(judge.base_url) > 2048:
        raise invalid_argument("judge.base_url", "judge.base_url is longer than 2048 characters")
    if len(judge.model) > 200:
        raise invalid_argument("judge.model", "judge.model is longer than 200 characters")
    if judge.key_name and not KEY_NAME.fullmatch(judge.key_name):
        raise invalid_argument(
            "judge.key_name", "judge.key_name is 1 to 64 characters of a-z, 0-9, _ and -"
        )
    if len(judge.rubric) > MAX_RUBRIC_CHARS:
        raise invalid_argument(
            "judge.rubric", f"judge.rubric is longer than {MAX_RUBRIC_CHARS} characters"
        )
    low = judge.scale_min if judge.HasField("scale_min") else DEFAULT_SCALE[0]
    high = judge.scale_max if judge.HasField("scale_max") else DEFAULT_SCALE[1]
    if not (-1000 <= low < high <= 1000):
        raise invalid_argument(
            "judge.scale_max",
            f"the judge's scale must run from a lower to a higher integer within ±1000, not "
            f"{low} to {high}",
        )
    return JudgeSpec(
        base_url=judge.base_url.rstrip("/"),
        model=judge.model,
        key_name=judge.key_name,
        rubric=judge.rubric.strip() or DEFAULT_RUBRIC,
        scale=(low, high),
        threshold=_fraction(
            judge.threshold if judge.HasField("threshold") else DEFAULT_JUDGE_THRESHOLD,
            "judge.threshold",
        ),
        weight=_weight(judge.weight if judge.HasField("weight") else 1.0, "judge.weight"),
    )


def parse_groundedness(check: jpb.GroundednessCheck, has_judge: bool) -> GroundednessSpec:
    method = check.method or jpb.GROUNDEDNESS_METHOD_OFFLINE
    if method not in jpb.GroundednessMethod.values():
        raise invalid_argument("groundedness.method", "groundedness.method is offline or judge")
    if method == jpb.GROUNDEDNESS_METHOD_JUDGE and not has_judge:
        raise invalid_argument(
            "groundedness.method",
            "the judge method of groundedness needs a judge: give one, or use method offline",
        )
    return GroundednessSpec(
        method=method,
        threshold=_fraction(
            check.threshold if check.HasField("threshold") else DEFAULT_GROUNDEDNESS_THRESHOLD,
            "groundedness.threshold",
        ),
        weight=_weight(check.weight if check.HasField("weight") else 1.0, "groundedness.weight"),
    )


def parse_plan(
    validators: Sequence[jpb.Validator],
    judge: jpb.Judge | None,
    groundedness: jpb.GroundednessCheck | None,
    reference: str,
    *,
    has_operator_judge: bool,
) -> Plan:
    """The plan, or INVALID_ARGUMENT. `judge` / `groundedness`: None when not asked for."""
    if len(reference) > MAX_REFERENCE_CHARS:
        raise invalid_argument(
            "reference", f"reference is longer than {MAX_REFERENCE_CHARS} characters"
        )
    configs = parse_validators(validators)
    judge_spec = parse_judge(judge, has_operator_judge) if judge is not None else None
    grounded = (
        parse_groundedness(groundedness, judge_spec is not None)
        if groundedness is not None
        else None
    )
    if not configs and judge_spec is None and grounded is None:
        raise invalid_argument(
            "validators",
            "nothing to evaluate: give validators, a judge or a groundedness check "
            "(GET /v1/evaluations/validators lists the validators)",
        )
    return Plan(configs, judge_spec, grounded, reference)


def plan_from_config(config: jpb.EvalConfig, *, has_operator_judge: bool) -> Plan:
    return parse_plan(
        config.validators,
        config.judge if config.HasField("judge") else None,
        config.groundedness if config.HasField("groundedness") else None,
        "",
        has_operator_judge=has_operator_judge,
    )
