"""`tunelab eval ...`: judge traced LLM calls and read the judgments back.

    tunelab eval run TRACE_ID --validator is_json --validator contains:'{"value": "Paris"}'
    tunelab eval run TRACE_ID --judge-model gpt-4o-mini --rubric "Correct?" --groundedness offline
    tunelab eval list [--trace T] [--session S] [--failed] [--json]
    tunelab eval summary [--by validator|model|hour|day] [filters] [--json]
    tunelab eval validators                       the validator kinds and their parameters

`run` exits 0 when the judgment passed and 1 when it failed (a check failed, or could not be
made: the judge timed out, answered prose ...); a request that fails exits 1 as well, with a
`tunelab: ...` line on stderr and nothing on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from tunelab_cli.api import CliError, api_client, checked, print_json
from tunelab_cli.listing import (
    Column,
    Pages,
    add_paging,
    duration,
    fit,
    given,
    header_line,
    limit_of,
    number,
    print_table,
    row_line,
    score,
    show,
    stamp,
    time_range,
    unit_interval,
)

KIND = re.compile(r"[a-z][a-z0-9_]*")
GROUPS = ("validator", "model", "hour", "day")
# The flags that are JudgmentFilter fields as they are, by their query parameter.
TEXT_FILTERS = {
    "trace": "trace_id",
    "span": "span_id",
    "session": "session_id",
    "model": "model",
    "validator": "validator",
    "rule": "rule_id",
    "status": "status",
}
JUDGE_FLAGS = ("judge_model", "judge_url", "judge_key", "rubric")

LIST_COLUMNS = (
    Column("CREATED (UTC)", 19),
    Column("JUDGMENT", 30, clip=False),
    Column("TRACE", 32, clip=False),
    Column("MODEL", 18),
    Column("SCORE", 5, right=True),
    Column("RESULT", 6),
    Column("FAILED CHECKS", 0),
)
CHECK_COLUMNS = (
    Column("CHECK", 0),
    Column("RESULT", 0),
    Column("SCORE", 0, right=True),
    Column("WEIGHT", 0, right=True),
    Column("REASON", 0),
)
SUMMARY_COLUMNS = (
    Column("GROUP", 0),
    Column("COUNT", 0, right=True),
    Column("PASS RATE", 0, right=True),
    Column("MEAN", 0, right=True),
    Column("P50", 0, right=True),
    Column("P90", 0, right=True),
    Column("ERRORS", 0, right=True),
)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


def _json(text: str) -> Any:
    """JSON as the standard defines it: NaN and Infinity are refused, not read as floats."""
    return json.loads(text, parse_constant=_refuse_constant)


def parse_validator(text: str) -> dict[str, Any]:
    """One --validator: KIND, or KIND:JSON_PARAMS with the parameters as a JSON object."""
    kind, colon, raw = text.partition(":")
    kind = kind.strip()
    where = f"--validator {text!r}"
    if not KIND.fullmatch(kind):
        raise CliError(
            f"{where}: give a validator kind (such as contains or is_json), then optionally "
            "':' and its parameters as a JSON object; `tunelab eval validators` lists them"
        )
    validator: dict[str, Any] = {"kind": kind}
    if not colon:
        return validator
    if not raw.strip():
        raise CliError(f"{where}: nothing after ':'; give the parameters as a JSON object")
    try:
        params = _json(raw)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{where}: the parameters are not valid JSON: {exc.msg} at character {exc.pos + 1}"
        ) from None
    except ValueError as exc:
        raise CliError(f"{where}: the parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise CliError(f'{where}: the parameters must be a JSON object, like {{"value": 1}}')
    validator["params"] = params
    return validator


def read_validators_file(name: str) -> list[dict[str, Any]]:
    """A JSON list of validators ({"kind", "name"?, "params"?, "weight"?, "threshold"?}), or
    an object holding one as "validators"; "-" reads stdin."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--validators-file {name}: cannot read it ({exc})") from None
    try:
        data = _json(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"--validators-file {name}: not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise CliError(f"--validators-file {name}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "validators" in data:
        data = data["validators"]
    if not isinstance(data, list):
        raise CliError(
            f'--validators-file {name}: give a JSON list of validators, or {{"validators": [...]}}'
        )
    for index, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
            raise CliError(
                f'--validators-file {name}: validator {index} is not an object with a "kind"'
            )
    return data


def judge_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    """The judge asked for: --judge alone is the operator's configured judge."""
    if not args.judge and not any(getattr(args, flag) for flag in JUDGE_FLAGS):
        return None
    url = args.judge_url or ""
    if url and not url.startswith(("http://", "https://")):
        raise CliError(f"--judge-url {url!r}: give an http:// or https:// URL")
    fields = (
        ("base_url", url),
        ("model", args.judge_model),
        ("key_name", args.judge_key),
        ("rubric", args.rubric),
    )
    return {name: value for name, value in fields if value}


def evaluate_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of POST /v1/evaluations for `eval run`."""
    validators = [parse_validator(text) for text in args.validators or ()]
    if args.validators_file:
        validators += read_validators_file(args.validators_file)
    names = [str(v.get("name") or v["kind"]) for v in validators]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise CliError(
            f"more than one validator named {', '.join(twice)}: a name (default: the kind) is "
            'one per evaluation; give each its own "name" in --validators-file'
        )
    judge = judge_spec(args)
    if not validators and judge is None and not args.groundedness:
        raise CliError(
            "nothing to check: give --validator, --validators-file, the judge (--judge or "
            "--judge-model ...) or --groundedness"
        )
    body: dict[str, Any] = {"trace_id": args.trace_id, "validators": validators}
    if args.span:
        body["span_id"] = args.span
    if judge is not None:
        body["judge"] = judge
    if args.groundedness:
        body["groundedness"] = {"method": args.groundedness}
    if args.reference is not None:
        body["reference"] = args.reference
    if args.rerun:
        body["rerun"] = True
    return body


def _check_row(check: dict[str, Any]) -> list[str]:
    error = str(check.get("error") or "")
    result = "error" if error else ("pass" if check.get("passed") else "FAIL")
    reason = str(check.get("reason") or "")
    if error:
        reason = f"{error}: {reason}" if reason else error
    weight = number(check.get("weight"))
    return [
        str(check.get("name") or check.get("kind") or "-"),
        result,
        score(check.get("score")),
        "-" if weight is None else f"{weight:g}",
        reason or "-",
    ]


def judgment_lines(judgment: dict[str, Any]) -> list[str]:
    """A judgment (the JSON of eval.v1.Judgment) for people: the verdict and overall score,
    then each check, then what the judge and the groundedness check said."""
    passed = bool(judgment.get("passed"))
    failed = [str(name) for name in judgment.get("failed", [])]
    verdict = "PASSED" if passed else "FAILED"
    if judgment.get("status") == "error":
        verdict += " (a check could not be made)"
    head = f"{verdict}  score {score(judgment.get('score'))}"
    if failed:
        head += f"  failed: {', '.join(failed)}"
    where = f"trace {judgment.get('trace_id', '')}  span {judgment.get('span_id', '')}"
    for key in ("model", "session_id"):
        if value := judgment.get(key):
            where += f"  {key.removesuffix('_id')} {value}"
    lines = [head, where]
    ident = f"judgment {judgment.get('id', '')}, attempt {judgment.get('attempt', 1)}"
    lines.append(f"{ident}, {stamp(judgment.get('created_at'))} UTC")
    if judgment.get("trace_deleted"):
        lines.append("(the trace was deleted after it was judged; the judgment is kept)")
    rows = [_check_row(check) for check in judgment.get("results", [])]
    if rows:
        columns = fit(CHECK_COLUMNS, rows)
        lines += ["", "  " + header_line(columns)]
        lines += ["  " + row_line(columns, row) for row in rows]
    lines += _judge_lines(judgment.get("judge") or {})
    lines += _groundedness_lines(judgment.get("groundedness") or {})
    return lines


def _judge_lines(judge: dict[str, Any]) -> list[str]:
    if not judge:
        return []
    raw = number(judge.get("raw_score"))
    scale = f"{judge.get('scale_min', '?')}..{judge.get('scale_max', '?')}"
    said = "no score" if raw is None else f"{raw:g} on {scale}"
    attempts = int(judge.get("attempts") or 0)
    line = f"judge {judge.get('model') or '(configured)'}: {said}"
    line += f", {attempts} attempt{'s' if attempts != 1 else ''}"
    line += f", {duration(judge.get('latency_ms'))}"
    if trace := judge.get("judge_trace_id"):
        line += f" (its own trace: {trace})"
    lines = ["", line]
    if reasoning := str(judge.get("reasoning") or "").strip():
        lines += [f"  {text}" for text in reasoning.splitlines() if text.strip()]
    return lines


def _groundedness_lines(outcome: dict[str, Any]) -> list[str]:
    if not outcome:
        return []
    claims = outcome.get("claims", [])
    supported = sum(1 for claim in claims if claim.get("supported"))
    found = number(outcome.get("score"))
    said = "no checkable claim" if found is None else f"{found:.2f}"
    line = f"groundedness ({outcome.get('method') or '-'}): {said}"
    if claims:
        line += f", {supported} of {len(claims)} claims supported"
    lines = ["", line]
    lines += [f"  unsupported: {text}" for text in outcome.get("unsupported", [])]
    return lines


def cmd_run(args: argparse.Namespace) -> None:
    body = evaluate_body(args)
    with api_client(args) as client:
        answer = checked(client.post("/v1/evaluations", json=body))
    judgment = answer.get("judgment") or {}
    if args.json:
        print_json(answer)
    else:
        print("\n".join(judgment_lines(judgment)))
        if not answer.get("created", True):
            print(
                "(judged before with this configuration: that judgment is shown; "
                "--rerun judges again)",
                file=sys.stderr,
            )
    sys.exit(0 if judgment.get("passed") else 1)


def add_judgment_filters(parser: argparse.ArgumentParser) -> None:
    filters = parser.add_argument_group("filters (every one given must hold)")
    filters.add_argument("--trace", help="judgments of this trace")
    filters.add_argument("--span", help="judgments of this span")
    filters.add_argument("--session", help="judgments of this conversation (session id)")
    filters.add_argument("--model", help="judgments of spans of this model")
    filters.add_argument("--validator", help="judgments that ran a check of this name")
    filters.add_argument("--rule", help="judgments made by this evaluation rule")
    verdict = filters.add_mutually_exclusive_group()
    verdict.add_argument("--failed", action="store_true", help="only failed judgments")
    verdict.add_argument("--passed", action="store_true", help="only passed judgments")
    filters.add_argument("--min-score", type=float, metavar="X", help="overall score >= X")
    filters.add_argument("--max-score", type=float, metavar="X", help="overall score <= X")
    filters.add_argument(
        "--status", choices=("complete", "error"), help="error: a check could not be made"
    )
    filters.add_argument("--since", help="made at or after: 1h, 30m, 2d ago, or ISO 8601")
    filters.add_argument("--until", help="made before: the same forms as --since")


def judgment_filter(args: argparse.Namespace) -> dict[str, Any]:
    """The filter flags as the routes' query parameters (those of JudgmentFilter)."""
    params = {**given(args, TEXT_FILTERS), **time_range(args, "created_from", "created_to")}
    if args.failed or args.passed:
        params["passed"] = "true" if args.passed else "false"
    low = unit_interval(args.min_score, "--min-score")
    high = unit_interval(args.max_score, "--max-score")
    if low is not None and high is not None and low > high:
        raise CliError(f"--min-score {low:g} is above --max-score {high:g}: nothing could match")
    if low is not None:
        params["min_score"] = low
    if high is not None:
        params["max_score"] = high
    return params


def list_row(judgment: dict[str, Any]) -> list[str]:
    if judgment.get("status") == "error":
        result = "error"
    else:
        result = "pass" if judgment.get("passed") else "FAIL"
    return [
        stamp(judgment.get("created_at")),
        str(judgment.get("id", "")),
        str(judgment.get("trace_id", "")),
        str(judgment.get("model") or "-"),
        score(judgment.get("score")),
        result,
        ", ".join(str(name) for name in judgment.get("failed", [])) or "-",
    ]


def cmd_list(args: argparse.Namespace) -> None:
    params, limit = judgment_filter(args), limit_of(args)
    with api_client(args) as client:
        pages = Pages(client, "/v1/judgments", params, "judgments", limit, args.page_token)
        show(pages, as_json=args.json, columns=LIST_COLUMNS, row=list_row, nothing="no judgments")


def summary_params(args: argparse.Namespace) -> dict[str, Any]:
    params = judgment_filter(args)
    if args.by:
        params["group_by"] = args.by
    return params


def summary_rows(answer: dict[str, Any], by: str | None) -> list[list[str]]:
    rows = []
    for row in answer.get("rows", []):
        group = str(row.get("group") or "")
        if by in ("hour", "day"):
            group = stamp(group)
        rate = number(row.get("pass_rate"))
        percentiles = row.get("score") or {}
        rows.append(
            [
                group or "(all)",
                str(int(number(row.get("count")) or 0)),
                "-" if rate is None else f"{rate:.1%}",
                score(row.get("mean_score")),
                score(percentiles.get("p50")),
                score(percentiles.get("p90")),
                str(int(number(row.get("errors")) or 0)),
            ]
        )
    return rows


def cmd_summary(args: argparse.Namespace) -> None:
    params = summary_params(args)
    with api_client(args) as client:
        answer = checked(client.get("/v1/evaluations/summary", params=params))
    if args.json:
        print_json(answer)
        return
    rows = summary_rows(answer, args.by)
    if not rows:
        print("no judgments", file=sys.stderr)
        return
    print_table(SUMMARY_COLUMNS, rows)


def cmd_validators(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        answer = checked(client.get("/v1/evaluations/validators"))
    if args.json:
        print_json(answer)
        return
    for kind in answer.get("kinds", []):
        threshold = number(kind.get("default_threshold"))
        passes = "" if threshold is None else f" (passes at {threshold:g})"
        print(f"{kind.get('kind', '')}{passes}: {kind.get('description', '')}")
        for name, what in sorted((kind.get("params") or {}).items()):
            print(f"    {name}: {what}")


def register(commands: Any) -> None:
    """Add `eval` and its actions to the root parser's subcommands."""
    sub = commands.add_parser(
        "eval", help="judge traced LLM calls; read the judgments"
    ).add_subparsers(dest="action", required=True)

    run = sub.add_parser(
        "run",
        help="judge one trace now (exit status 1 when it fails)",
        description="""\
Judge one span of a trace (default: its root, or its last LLM span with an output) with
validators, an LLM judge and groundedness, and print the judgment. The same configuration on
the same span returns the judgment already made, unless --rerun.

exit status: 0 when the judgment passed; 1 when it failed (a check failed, or could not be
made); 1 too, with a `tunelab: ...` line on stderr, when the request itself failed.""",
        epilog="""examples:
  tunelab eval run T --validator is_json --validator contains:'{"value": "Paris"}'
  tunelab eval run T --validators-file checks.json --groundedness offline
  tunelab eval run T --judge-model gpt-4o-mini --judge-url https://api.openai.com/v1 \\
      --judge-key openai --rubric "Is the answer correct and polite?"
validators file: [{"kind": "regex", "name": "has-date", "params": {"pattern": "\\\\d{4}"},
                   "weight": 2, "threshold": 1}, ...]""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("trace_id")
    run.add_argument("--span", help="the span to judge (default: see above)")
    run.add_argument(
        "--validator",
        action="append",
        dest="validators",
        metavar="KIND[:JSON]",
        help="a check, with its parameters as a JSON object (repeat); "
        "`tunelab eval validators` lists the kinds",
    )
    run.add_argument(
        "--validators-file",
        metavar="FILE",
        help="a JSON list of validators with names, weights and thresholds ('-': stdin)",
    )
    judge = run.add_argument_group("LLM judge (any OpenAI-compatible chat-completions API)")
    judge.add_argument(
        "--judge", action="store_true", help="use the judge (alone: the configured one)"
    )
    judge.add_argument("--judge-model", metavar="MODEL")
    judge.add_argument("--judge-url", metavar="URL", help="its base URL, e.g. .../v1")
    judge.add_argument(
        "--judge-key", metavar="NAME", help="the name of your stored judge key for it"
    )
    judge.add_argument("--rubric", metavar="TEXT", help="what the judge grades")
    run.add_argument(
        "--groundedness",
        choices=("offline", "judge"),
        help="check the answer against the trace's retrieved context",
    )
    run.add_argument("--reference", metavar="TEXT", help="the expected answer (similarity)")
    run.add_argument("--rerun", action="store_true", help="judge again even if judged before")
    run.add_argument("--json", action="store_true", help="the route's answer as it is")
    run.set_defaults(func=cmd_run)

    listed = sub.add_parser("list", help="judgments, newest first")
    add_judgment_filters(listed)
    add_paging(listed, "judgments")
    listed.set_defaults(func=cmd_list)

    summary = sub.add_parser("summary", help="pass rate and scores, overall or by a group")
    summary.add_argument("--by", choices=GROUPS, help="one row a validator, model, hour or day")
    add_judgment_filters(summary)
    summary.add_argument("--json", action="store_true", help="the route's answer as it is")
    summary.set_defaults(func=cmd_summary)

    kinds = sub.add_parser("validators", help="the validator kinds and their parameters")
    kinds.add_argument("--json", action="store_true", help="the route's answer as it is")
    kinds.set_defaults(func=cmd_validators)
