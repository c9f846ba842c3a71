"""tunelab: the command line for the tunelab gateway.

    tunelab dev [--s3]                          run the whole suite here (`make run`; `make run-s3`)
    tunelab token --user alice                  print a development JWT the dev gateway accepts
    tunelab datasets upload train.jsonl         upload, with a progress bar; prints the dataset
    tunelab datasets list | get ID | delete ID
    tunelab datasets link ID [--ttl S] [--max-uses N]   mint a download URL
    tunelab datasets curate --format sft|dpo [--min-score X] [--filter K=V] [--dry-run] ...
                                                a dataset from your judged traces
    tunelab datasets provenance ID [--line N]   the trace and span each curated row came from
    tunelab deploy create DATASET_ID [--watch] [--dry-run] ...   check, then launch a run
    tunelab deploy watch ID | list | get ID | cancel ID | events ID | output ID [-o FILE]
    tunelab keys set runpod | list | delete runpod      GPU provider keys (read from stdin)
    tunelab traces list [--model M] [--since 1h] [--roots] [--limit N | --all] [--json]
    tunelab traces get TRACE_ID                 a trace as a tree of spans
    tunelab traces export [--format csv] [-o FILE] [filters]   the matching spans, streamed
    tunelab eval run TRACE_ID --validator contains:'{"value": "Paris"}' ...   judge a trace
    tunelab eval list [--trace T] [--failed] | summary [--by validator] | validators

Credentials: --token or TUNELAB_TOKEN; otherwise, where the development signing key is at hand
(var/secrets, as `make run` leaves it, so run from the project directory), a token for --user,
TUNELAB_USER or your login name, in that order. The gateway: --url or TUNELAB_URL.

`datasets upload` exits with status 2 when the file was stored but is not usable for training
(the reason and the first bad line are printed); `datasets curate` exits 1 when the curation
failed or was cancelled. `deploy create` exits with status 2 when a
pre-flight check fails (nothing is rented); `deploy watch` exits 1 when the run failed or was
cancelled; `eval run` exits 1 when the judgment failed. The `traces` and `eval` lists print a
table (times in UTC), or with --json the route's JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from tunelab_cli import curate, deploy, dev, evals, traces
from tunelab_cli.api import CliError, api_client, checked, mint_dev_token, print_json

CHUNK = 1 << 20


def cmd_token(args: argparse.Namespace) -> None:
    print(mint_dev_token(args.user, args.ttl))


def cmd_upload(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    size = path.stat().st_size

    def body() -> Any:
        with (
            path.open("rb") as handle,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=path.name,
                file=sys.stderr,
            ) as bar,
        ):
            while chunk := handle.read(CHUNK):
                bar.update(len(chunk))
                yield chunk

    with api_client(args) as client:
        response = client.post(
            "/v1/datasets",
            params={"name": args.name or path.name},
            content=body(),
            headers={"Content-Length": str(size), "Content-Type": "application/x-ndjson"},
        )
        dataset = checked(response)
        print_json(dataset)
    if error := dataset.get("format_error"):
        print(
            f"tunelab: stored as {dataset['id']}, but it is not usable for training: "
            f"{error['reason']}",
            file=sys.stderr,
        )
        sys.exit(2)


def cmd_list(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        token = ""
        shown = 0
        while True:
            page = checked(
                client.get("/v1/datasets", params={"page_token": token} if token else {})
            )
            for dataset in page["datasets"]:
                print(
                    f"{dataset['id']}  {dataset['format']:<14} "
                    f"{int(dataset['row_count']):>10} rows  {dataset['name']}"
                )
                shown += 1
            token = page["next_page_token"]
            if not token:
                if not shown:
                    print("no datasets yet", file=sys.stderr)
                return


def cmd_get(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        print_json(checked(client.get(f"/v1/datasets/{args.id}")))


def cmd_delete(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        checked(client.delete(f"/v1/datasets/{args.id}"))
        print(f"deleted {args.id}")


def cmd_link(args: argparse.Namespace) -> None:
    body = {"ttl_seconds": args.ttl, "max_uses": args.max_uses}
    with api_client(args) as client:
        print_json(checked(client.post(f"/v1/datasets/{args.id}/download-tokens", json=body)))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="tunelab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument(
        "--url",
        default=os.environ.get("TUNELAB_URL", "http://127.0.0.1:8080"),
        help="the gateway (default: TUNELAB_URL, or http://127.0.0.1:8080)",
    )
    root.add_argument("--token", help="bearer JWT (default: TUNELAB_TOKEN, or a dev token)")
    root.add_argument("--user", help="user for an automatic dev token")
    commands = root.add_subparsers(dest="command", required=True)

    run_dev = commands.add_parser("dev", help="run the whole suite on this machine")
    run_dev.add_argument(
        "--s3",
        action="store_true",
        help="keep datasets and outputs in a local SeaweedFS S3 server (make run-s3) instead "
        "of directories",
    )
    run_dev.set_defaults(func=lambda args: sys.exit(dev.run(s3=args.s3)))
    token = commands.add_parser("token", help="print a development JWT")
    token.add_argument("--user", required=True, help="the user id (the JWT's sub)")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    datasets = commands.add_parser("datasets", help="upload, list and share datasets")
    sub = datasets.add_subparsers(dest="action", required=True)
    upload = sub.add_parser("upload", help="upload a JSONL file")
    upload.add_argument("file")
    upload.add_argument("--name", help="display name (default: the file's name)")
    upload.set_defaults(func=cmd_upload)
    sub.add_parser("list", help="your datasets, newest first").set_defaults(func=cmd_list)
    for name, func in (("get", cmd_get), ("delete", cmd_delete)):
        one = sub.add_parser(name)
        one.add_argument("id")
        one.set_defaults(func=func)
    link = sub.add_parser("link", help="mint a download URL (no other credential needed)")
    link.add_argument("id")
    link.add_argument("--ttl", type=int, default=0, help="seconds, at most 7200 (the default)")
    link.add_argument("--max-uses", type=int, default=0, help="downloads allowed (default 1)")
    link.set_defaults(func=cmd_link)
    curate.register(sub)

    deploy.register(commands)
    traces.register(commands)
    evals.register(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except CliError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        # The reader went away (`tunelab traces list --all | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except httpx.HTTPError as exc:
        print(
            f"tunelab: cannot reach {args.url} ({exc}); is `make run` going? "
            "Point --url (or TUNELAB_URL) at the gateway.",
            file=sys.stderr,
        )
        sys.exit(1)
