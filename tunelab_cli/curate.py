"""`tunelab datasets curate`: a fine-tuning dataset from your judged traces.

    tunelab datasets curate --format sft --min-score 0.8 --filter model=gpt-4o --since 7d
    tunelab datasets curate --format dpo --margin 0.3 --check paris --dry-run
    tunelab datasets curate --format sft --passed --dedupe --eval-fraction 0.1 --scrub
    tunelab datasets provenance DATASET_ID [--line N]    where a curated row came from

The filters are those of `tunelab traces list` (every one given must hold), as flags or as
`--filter KEY=VALUE` (model, provider, session, tag, trace, since, until, status). The job's
progress is shown until it ends; then the dataset is printed, with the command that trains on
it. With --dry-run nothing is stored: the counts and a sample of rows are printed. Exits 1 when
the curation failed or was cancelled (Ctrl-C cancels it).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

from tunelab_cli import traces
from tunelab_cli.api import CliError, api_client, checked, print_json
from tunelab_cli.listing import unit_interval

# --filter KEY=VALUE: the flag each key stands for.
FILTER_KEYS = {
    "model": "model",
    "provider": "provider",
    "session": "session",
    "session_id": "session",
    "tag": "tags",
    "tags": "tags",
    "trace": "trace",
    "trace_id": "trace",
    "since": "since",
    "until": "until",
    "status": "status",
}
ACTIVE = ("queued", "running")
POLL_SECONDS = 1.0


def register(sub: Any) -> None:
    curate = sub.add_parser(
        "curate",
        help="make a dataset from judged traces (SFT or DPO)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    curate.add_argument("--format", required=True, choices=("sft", "dpo"))
    curate.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a span filter, e.g. model=gpt-4o, tag=production, since=7d (repeat)",
    )
    traces.add_filters(curate)
    conditions = curate.add_argument_group("conditions (on the spans' judgments)")
    conditions.add_argument("--min-score", type=float, metavar="X", help="overall score >= X")
    conditions.add_argument("--passed", action="store_true", help="the judgment passed")
    conditions.add_argument(
        "--check", action="append", default=[], metavar="NAME", help="this check passed (repeat)"
    )
    conditions.add_argument(
        "--min-grounded", type=float, metavar="Y", help="groundedness score >= Y"
    )
    conditions.add_argument("--rule", help="only the judgments of this eval rule count")
    options = curate.add_argument_group("options")
    options.add_argument("--name", help="the dataset's name (default: curated-<format>-<time>)")
    options.add_argument("--dedupe", action="store_true", help="one row per input (SFT)")
    options.add_argument(
        "--eval-fraction", type=float, default=0.0, metavar="F", help="hold out F (<= 0.5)"
    )
    options.add_argument(
        "--max-per-session", type=int, default=0, metavar="N", help="at most N rows a session"
    )
    options.add_argument(
        "--keep-flagged", action="store_true", help="keep spans with errors or warnings"
    )
    options.add_argument(
        "--scrub", action="store_true", help="mask emails, phones, cards, IPs and SSNs"
    )
    options.add_argument(
        "--margin", type=float, metavar="M", help="DPO: chosen beats rejected by M (0.2)"
    )
    options.add_argument("--dry-run", action="store_true", help="count and sample; store nothing")
    options.add_argument("--sample", type=int, default=0, metavar="N", help="dry run: N rows")
    options.add_argument("--no-wait", action="store_true", help="print the job and return")
    options.add_argument("--json", action="store_true", help="print the curation as JSON")
    curate.set_defaults(func=cmd_curate)

    prov = sub.add_parser("provenance", help="where a curated dataset's rows came from")
    prov.add_argument("id")
    prov.add_argument("--line", type=int, default=0, help="this row only (from 1)")
    prov.set_defaults(func=cmd_provenance)


def _apply_filters(args: argparse.Namespace) -> None:
    for given in args.filter:
        key, eq, value = given.partition("=")
        flag = FILTER_KEYS.get(key.strip().lower())
        if not eq or flag is None:
            raise CliError(
                f"--filter {given!r}: use KEY=VALUE with KEY one of "
                + ", ".join(sorted(set(FILTER_KEYS)))
            )
        if flag == "tags":
            args.tags = [*(args.tags or []), value]
        else:
            setattr(args, flag, value)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    _apply_filters(args)
    span_filter: dict[str, Any] = traces.span_filter(args)
    if span_filter.pop("roots_only", None):
        span_filter["roots_only"] = True
    conditions: dict[str, Any] = {}
    if (value := unit_interval(args.min_score, "--min-score")) is not None:
        conditions["min_score"] = value
    if (value := unit_interval(args.min_grounded, "--min-grounded")) is not None:
        conditions["min_groundedness"] = value
    if args.passed:
        conditions["passed"] = True
    if args.check:
        conditions["passed_checks"] = args.check
    if args.rule:
        conditions["rule_id"] = args.rule
    options: dict[str, Any] = {
        "dedupe": args.dedupe,
        "eval_fraction": args.eval_fraction,
        "max_per_session": args.max_per_session,
        "keep_flagged": args.keep_flagged,
        "scrub": args.scrub,
        "sample_size": args.sample,
    }
    if args.margin is not None:
        options["margin"] = args.margin
    body: dict[str, Any] = {
        "format": args.format,
        "filter": span_filter,
        "conditions": conditions,
        "options": options,
        "dry_run": args.dry_run,
    }
    if args.name:
        body["name"] = args.name
    return body


def progress_line(curation: dict[str, Any]) -> str:
    p = curation.get("progress", {})

    def n(key: str) -> int:
        return int(p.get(key, 0))

    return (
        f"{curation['state']}: {n('spans_read')} spans read, {n('spans_matched')} met the "
        f"conditions, {n('rows')} rows, {n('eval_rows')} held out"
    )


def summary(curation: dict[str, Any]) -> str:
    p = curation.get("progress", {})
    dropped = {
        "unjudged": "unjudged",
        "unusable": "not a chat",
        "flagged": "with errors or warnings",
        "duplicates": "repeated inputs",
        "over_session_cap": "over the session cap",
        "unpaired": "inputs without a pair",
    }
    parts = [f"{int(p[key])} {label}" for key, label in dropped.items() if int(p.get(key, 0))]
    masked = p.get("masked", {})
    lines = [progress_line(curation)]
    if parts:
        lines.append("dropped: " + ", ".join(parts))
    if masked:
        lines.append("masked: " + ", ".join(f"{v} {k}" for k, v in sorted(masked.items())))
    return "\n".join(lines)


def _get(client: httpx.Client, curation_id: str) -> dict[str, Any]:
    return dict(checked(client.get(f"/v1/curations/{curation_id}")))


def cmd_curate(args: argparse.Namespace) -> None:
    body = request_body(args)
    with api_client(args) as client:
        curation = dict(checked(client.post("/v1/curations", json=body)))
        if not args.no_wait:
            curation = _wait(client, curation)
    if args.json or args.no_wait:
        print_json(curation)
    else:
        _report(curation)
    if curation["state"] in ("failed", "cancelled"):
        sys.exit(1)


def _wait(client: httpx.Client, curation: dict[str, Any]) -> dict[str, Any]:
    shown = ""
    try:
        while curation["state"] in ACTIVE:
            line = progress_line(curation)
            if line != shown and sys.stderr.isatty():
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
                shown = line
            time.sleep(POLL_SECONDS)
            curation = _get(client, curation["id"])
    except KeyboardInterrupt:
        checked(client.post(f"/v1/curations/{curation['id']}/cancel"))
        print("\ncancelled", file=sys.stderr)
        return _get(client, curation["id"])
    if shown:
        print(file=sys.stderr)
    return curation


def _report(curation: dict[str, Any]) -> None:
    print(f"curation {curation['id']}")
    print(summary(curation))
    if curation["state"] == "failed":
        print(f"error: {curation.get('error', '')}", file=sys.stderr)
        return
    if curation.get("dry_run"):
        for row in curation.get("sample", []):
            print_json(row)
        return
    if curation["state"] == "succeeded":
        method = "dpo" if curation.get("format") == "dpo" else "sft"
        print(f"dataset {curation['dataset_id']} ({curation['name']})")
        if curation.get("eval_dataset_id"):
            print(f"evaluation split {curation['eval_dataset_id']}")
        print(f"train on it: tunelab deploy create {curation['dataset_id']} --method {method}")


def cmd_provenance(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"line": args.line} if args.line else {}
    with api_client(args) as client:
        token = ""
        while True:
            page = checked(
                client.get(
                    f"/v1/datasets/{args.id}/provenance",
                    params={**params, **({"page_token": token} if token else {})},
                )
            )
            for row in page.get("rows", []):
                pair = (
                    f"  rejected {row['rejected_trace_id']}/{row['rejected_span_id']}"
                    if row.get("rejected_trace_id")
                    else ""
                )
                print(f"line {row['line']}: trace {row['trace_id']} span {row['span_id']}{pair}")
            token = page.get("next_page_token", "")
            if not token:
                break
