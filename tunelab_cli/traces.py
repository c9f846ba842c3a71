"""`tunelab traces ...`: read the traced LLM calls.

    tunelab traces list [--model M] [--session S] [--tag T] [--since 1h] [--roots] [--json]
    tunelab traces get TRACE_ID [--json]              the trace as a tree of spans
    tunelab traces export [--format jsonl|csv|json] [-o FILE] [filters]   streamed

The filters are the same for `list` and `export`; every one given must hold. Times are UTC.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from tqdm import tqdm

from tunelab_cli.api import CliError, api_client, checked, print_json
from tunelab_cli.listing import (
    Column,
    Pages,
    add_paging,
    duration,
    given,
    limit_of,
    number,
    print_table,
    score,
    show,
    stamp,
    time_range,
    unit_interval,
    usd,
    utf8,
)

KINDS = ("llm", "embedding", "retrieval", "rerank", "tool", "chain", "agent", "guardrail")
FORMATS = ("jsonl", "csv", "json")
# The flags that are SpanFilter fields as they are, by their query parameter.
TEXT_FILTERS = {
    "model": "model",
    "provider": "provider",
    "status": "status",
    "kind": "kind",
    "session": "session_id",
    "tags": "tags",
    "trace": "trace_id",
}

LIST_COLUMNS = (
    Column("START (UTC)", 19),
    Column("TRACE", 32, clip=False),
    Column("SPAN", 18),
    Column("MODEL", 18),
    Column("STATUS", 6),
    Column("DURATION", 8, right=True),
    Column("COST", 9, right=True),
    Column("GROUNDED", 8, right=True),
    Column("EVAL", 9),
)
TREE_COLUMNS = (
    Column("SPAN", 0),
    Column("KIND", 0),
    Column("MODEL", 0),
    Column("DURATION", 0, right=True),
    Column("STATUS", 0),
    Column("SPAN ID", 0, clip=False),
)


def add_filters(parser: argparse.ArgumentParser) -> None:
    filters = parser.add_argument_group("filters (every one given must hold)")
    filters.add_argument("--model", help="spans of this model, e.g. gpt-4o")
    filters.add_argument("--provider", help="spans served by this provider, e.g. openai")
    filters.add_argument("--status", choices=("ok", "error"))
    filters.add_argument("--kind", choices=KINDS)
    filters.add_argument("--session", help="spans of this conversation (session id)")
    filters.add_argument(
        "--tag", action="append", dest="tags", metavar="TAG", help="carrying this tag (repeat)"
    )
    filters.add_argument("--trace", help="only the spans of this trace")
    filters.add_argument("--since", help="started at or after: 1h, 30m, 2d ago, or ISO 8601")
    filters.add_argument("--until", help="started before: the same forms as --since")
    filters.add_argument("--min-duration-ms", type=float, metavar="MS")
    filters.add_argument("--min-cost", type=float, metavar="USD")
    filters.add_argument(
        "--min-groundedness", type=float, metavar="X", help="scored at least X (0 to 1)"
    )
    filters.add_argument(
        "--min-eval-score", type=float, metavar="X", help="judged with a score of at least X"
    )
    filters.add_argument(
        "--roots", action="store_true", help="only traces' roots: one row per trace"
    )


def span_filter(args: argparse.Namespace) -> dict[str, Any]:
    """The filter flags as the routes' query parameters (those of SpanFilter)."""
    params = {
        **given(args, TEXT_FILTERS),
        **time_range(args, "start_time_from", "start_time_to"),
    }
    for option, name in (("min_duration_ms", "min_duration_ms"), ("min_cost", "min_cost_usd")):
        if (value := getattr(args, option)) is not None:
            if value < 0:
                raise CliError(f"--{option.replace('_', '-')} {value:g}: not below 0")
            params[name] = value
    for option in ("min_groundedness", "min_eval_score"):
        flag = "--" + option.replace("_", "-")
        if (value := unit_interval(getattr(args, option), flag)) is not None:
            params[option] = value
    if args.roots:
        params["roots_only"] = "true"
    return params


def _verdict(evaluation: dict[str, Any]) -> str:
    found = number(evaluation.get("eval_score"))
    if found is None:
        return "-"
    passed = evaluation.get("eval_passed")
    return f"{found:.2f}" + ("" if passed is None else " pass" if passed else " FAIL")


def _status(span: dict[str, Any]) -> str:
    status = str(span.get("status") or "")
    return "-" if status in ("", "unspecified") else status


def list_row(span: dict[str, Any]) -> list[str]:
    timing = span.get("timing") or {}
    evaluation = span.get("evaluation") or {}
    return [
        stamp(timing.get("start_time")),
        str(span.get("trace_id", "")),
        str(span.get("name") or "-"),
        str(span.get("model") or "-"),
        _status(span),
        duration(timing.get("duration_ms")),
        usd((span.get("cost") or {}).get("total_usd")),
        score(evaluation.get("groundedness_score")),
        _verdict(evaluation),
    ]


def cmd_list(args: argparse.Namespace) -> None:
    params, limit = span_filter(args), limit_of(args)
    with api_client(args) as client:
        pages = Pages(client, "/v1/traces", params, "spans", limit, args.page_token)
        show(pages, as_json=args.json, columns=LIST_COLUMNS, row=list_row, nothing="no spans")


def tree_rows(answer: dict[str, Any], *, fancy: bool) -> list[list[str]]:
    """A row for each span of a GetTrace answer, depth first, its name drawn under its
    parent's. Walked with a stack, so however deep the tree it cannot overflow."""
    tee, last, bar = ("├─ ", "└─ ", "│  ") if fancy else ("|- ", "`- ", "|  ")
    rows: list[list[str]] = []
    # (node, the prefix of its own line, the prefix its children's lines continue)
    stack = [(node, "", "") for node in reversed(answer.get("roots", []))]
    while stack:
        node, prefix, indent = stack.pop()
        span = node.get("span") or {}
        rows.append(
            [
                prefix + str(span.get("name") or "-"),
                str(span.get("kind") or "-"),
                str(span.get("model") or "-"),
                duration((span.get("timing") or {}).get("duration_ms")),
                _status(span),
                str(span.get("span_id", "")),
            ]
        )
        children = node.get("children", [])
        for index in reversed(range(len(children))):
            final = index == len(children) - 1
            stack.append(
                (
                    children[index],
                    indent + (last if final else tee),
                    indent + ("   " if final else bar),
                )
            )
    return rows


def cmd_get(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        answer = checked(client.get(f"/v1/traces/{args.trace_id}"))
    if args.json:
        print_json(answer)
        return
    count = int(number(answer.get("span_count")) or 0)
    print(f"trace {answer.get('trace_id', args.trace_id)}: {count} span{'' if count == 1 else 's'}")
    print_table(TREE_COLUMNS, tree_rows(answer, fancy=utf8(sys.stdout)))


def export_format(chosen: str | None, output: str | None) -> str:
    """--format, else the output file's extension when it names one, else JSONL."""
    if chosen:
        return chosen
    suffix = Path(output).suffix.lstrip(".").lower() if output else ""
    if suffix == "ndjson":
        return "jsonl"
    return suffix if suffix in FORMATS else "jsonl"


def _copy(reply: httpx.Response, out: BinaryIO, bar: tqdm[Any] | None) -> int:
    written = 0
    for chunk in reply.iter_bytes():
        out.write(chunk)
        written += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return written


def _to_file(reply: httpx.Response, target: Path) -> int:
    """Written beside the target and renamed at the end: an export cut short never stands
    where a complete one would."""
    partial = target.with_name(target.name + ".part")
    try:
        with (
            partial.open("wb") as out,
            tqdm(
                unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, file=sys.stderr
            ) as bar,
        ):
            written = _copy(reply, out, bar)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return written


def cmd_export(args: argparse.Namespace) -> None:
    params = {**span_filter(args), "format": export_format(args.format, args.output)}
    target = Path(args.output) if args.output else None
    if target is not None and target.is_dir():
        raise CliError(f"{target} is a directory: give -o a file name")
    with (
        api_client(args) as client,
        client.stream("GET", "/v1/traces/export", params=params) as reply,
    ):
        if reply.status_code >= 400:
            reply.read()
            checked(reply)
        try:
            if target is None:
                _copy(reply, sys.stdout.buffer, None)
                sys.stdout.buffer.flush()
                return
            written = _to_file(reply, target)
        except httpx.TransportError as exc:
            where = "the output is incomplete" if target is None else f"{target} was not written"
            raise CliError(f"the export was cut short ({exc}); {where}") from exc
    print(f"wrote {written} bytes to {target}", file=sys.stderr)


def register(commands: Any) -> None:
    """Add `traces` and its actions to the root parser's subcommands."""
    group = commands.add_parser("traces", help="list, show and export traced LLM calls")
    sub = group.add_subparsers(dest="action", required=True)

    listed = sub.add_parser(
        "list",
        help="spans, newest first",
        description="Spans, newest first, as a table (times in UTC) or with --json as the "
        "route's JSON. --roots shows one row per trace.",
    )
    add_filters(listed)
    add_paging(listed, "spans")
    listed.set_defaults(func=cmd_list)

    get = sub.add_parser("get", help="one trace as a tree of spans")
    get.add_argument("trace_id")
    get.add_argument("--json", action="store_true", help="the route's answer as it is")
    get.set_defaults(func=cmd_get)

    export = sub.add_parser(
        "export",
        help="the matching spans as a file, streamed",
        description="The matching spans as JSONL, CSV or JSON, streamed as the service reads "
        "them: to stdout, or with -o to a file (with progress on stderr; a file is only "
        "written once the export is complete).",
    )
    export.add_argument(
        "--format", choices=FORMATS, help="default: from -o's extension, else jsonl"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    add_filters(export)
    export.set_defaults(func=cmd_export)
