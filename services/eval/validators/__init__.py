"""Deterministic validators for the eval service: pure functions of a span's texts and numbers.

    configs = parse_configs([{"kind": "contains", "params": {"value": "Paris"}},
                             {"kind": "latency_ms", "params": {"max": 2000}, "weight": 0.5}])
    verdict = evaluate(configs, Subject(output="Paris.", latency_ms=850))

Every score is in [0, 1] and never NaN; a validator never raises on a subject (a missing
field, an output that is not JSON or a regex timeout is a failed outcome with a reason); a bad
configuration raises ValidatorConfigError at parse time. Work on large outputs is bounded:
regex matches time out (100 ms by default, at most 1 s), similarity compares at most 10,000
characters (Levenshtein) or 20,000 words (ROUGE-L), JSON is parsed up to 10 M characters,
token counting stops once its bound is decided; other checks are linear scans.
"""

from services.eval.validators.config import ValidatorConfig, parse_config, parse_configs
from services.eval.validators.kinds import BUILDERS
from services.eval.validators.params import ValidatorConfigError
from services.eval.validators.subject import Outcome, Subject
from services.eval.validators.verdict import Judged, Verdict, evaluate

KINDS = tuple(sorted(BUILDERS))

__all__ = [
    "KINDS",
    "Judged",
    "Outcome",
    "Subject",
    "ValidatorConfig",
    "ValidatorConfigError",
    "Verdict",
    "evaluate",
    "parse_config",
    "parse_configs",
]
