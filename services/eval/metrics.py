"""The eval service's own Prometheus metrics: what an operator alerts on."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JUDGMENTS = Counter(
    "tunelab_eval_judgments_total",
    "Judgments made, by how they were asked for (direct, rule, job) and status (complete, error).",
    ["source", "status"],
)
CHECK_ERRORS = Counter(
    "tunelab_eval_check_errors_total",
    "Checks that produced no score, by check (judge, groundedness) and why (timeout, "
    "unparseable, out_of_scale, http_error, ...). A rise in judge timeouts or http_error is the "
    "judge endpoint's trouble.",
    ["check", "error"],
)
JUDGMENT_SECONDS = Histogram(
    "tunelab_eval_judgment_seconds",
    "Time to make one judgment, by whether an LLM judge was called.",
    ["judge"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WRITE_BACK_FAILURES = Counter(
    "tunelab_eval_write_back_failures_total",
    "Judgments whose scores could not be written onto their span at once (the housekeeping "
    "pass retries them).",
)
