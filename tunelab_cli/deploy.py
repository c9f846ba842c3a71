"""`tunelab deploy ...`: launch training runs and follow them.

    tunelab deploy create DATASET_ID [--watch] [--dry-run] ...   preflight, then launch
    tunelab deploy watch ID                     a live progress bar until the run ends
    tunelab deploy logs ID [--follow]           the pod's log (with --follow, until the run ends)
    tunelab deploy list | get ID | cancel ID | events ID

`create` exits with status 2, renting nothing, when a pre-flight check fails. `watch` (and
`create --watch`) exits 0 when the run succeeded, 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from tunelab_cli.api import CliError, api_client, checked, print_json

TERMINAL = {"succeeded", "failed", "cancelled"}
RECONNECTS = 5
# A watch that ends with these is picked up again (the service restarted, a deadline passed).
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}
WATCH_TIMEOUT = httpx.Timeout(30.0, read=60.0)  # the gateway sends a keepalive every 15 s


def _utf8() -> bool:
    return (sys.stderr.encoding or "").lower().replace("-", "") == "utf8"


def _marks() -> dict[str, str]:
    if _utf8():
        return {"pass": "✓", "warn": "!", "fail": "✗"}
    return {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def spec(args: argparse.Namespace) -> dict[str, Any]:
    hyperparameters: dict[str, Any] = {}
    for name in ("epochs", "learning_rate", "batch_size", "max_steps"):
        if (value := getattr(args, name)) is not None:
            hyperparameters[name] = value
    body: dict[str, Any] = {
        "provider": args.provider,
        "dataset_id": args.dataset_id,
        "method": args.method,
        "hyperparameters": hyperparameters,
        "limits": {"max_runtime_minutes": args.max_minutes, "max_cost_usd": args.max_cost},
    }
    if args.model:
        body["base_model"] = args.model
    if args.provider == "container":
        # The host's GPUs, by count only: type, cloud and spot are RunPod's.
        if args.gpu_count is not None:
            body["gpu"] = {"count": args.gpu_count}
    elif args.gpu or args.provider != "local":
        count = 1 if args.gpu_count is None else args.gpu_count
        gpu: dict[str, Any] = {"count": count, "cloud": args.cloud, "spot": args.spot}
        if args.gpu:
            gpu["type"] = args.gpu
        body["gpu"] = gpu
    return body


def _show_preflight(result: dict[str, Any]) -> None:
    marks = _marks()
    for check in result.get("checks", []):
        status = str(check.get("status", "")).lower()
        mark = marks.get(status, status.upper() or "?")
        _say(f"  {mark} {check.get('name', '')}: {check.get('message', '')}")
    estimate = result.get("estimate") or {}
    gpu = estimate.get("gpu_type") or "this machine"
    _say(
        f"estimate: ${float(estimate.get('hourly_usd', 0)):.2f}/h on {gpu}; at most "
        f"${float(estimate.get('max_total_usd', 0)):.2f} over "
        f"{float(estimate.get('max_minutes', 0)):g} min"
    )


def cmd_create(args: argparse.Namespace) -> None:
    body = spec(args)
    with api_client(args) as client:
        result = checked(client.post("/v1/deployments/preflight", json=body))
        _say("pre-flight checks:")
        _show_preflight(result)
        if not result.get("ok"):
            _say("tunelab: a pre-flight check failed; nothing was created")
            sys.exit(2)
        if args.dry_run:
            _say("dry run: nothing was created")
            return
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        try:
            response = client.post("/v1/deployments", json=body, headers=headers)
        except httpx.TransportError as exc:
            # The same key: if the first request did create the run, we get that run back.
            _say(f"tunelab: {exc.__class__.__name__} ({exc}); retrying once")
            time.sleep(1)
            response = client.post("/v1/deployments", json=body, headers=headers)
        if response.status_code == 400 and _reason(response) == "PREFLIGHT_FAILED":
            _say(f"tunelab: {response.json()['error'].get('message', 'a check failed')}")
            _say("nothing was created")
            sys.exit(2)
        deployment = checked(response)
        print(deployment["id"], flush=True)
        _say(f"created {deployment['id']} ({deployment.get('state', '')})")
        if args.watch:
            sys.exit(follow(client, deployment["id"]))
        _say(f"follow it with: tunelab deploy watch {deployment['id']}")


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["reason"])
    except (ValueError, KeyError, TypeError):
        return ""


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) for each server-sent event; comment lines (keepalives) are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield event, json.loads("\n".join(data))


def _event_line(event: dict[str, Any]) -> str:
    stamp = str(event.get("time", ""))
    stamp = stamp[11:19] if len(stamp) >= 19 else stamp
    message = event.get("message") or ""
    if event.get("state") and not message:
        message = f"-> {event['state']}"
    return f"{stamp} {event.get('kind', ''):<20} {message}"


def _postfix(deployment: dict[str, Any]) -> str:
    progress = deployment.get("progress") or {}
    parts = [str(deployment.get("state", ""))]
    if progress.get("step"):
        parts.append(f"loss={float(progress.get('loss', 0)):.3f}")
    parts.append(f"cost=${float(deployment.get('cost_usd', 0)):.2f}{_billed(deployment, '=')}")
    return " ".join(parts)


def _billed(deployment: dict[str, Any], sep: str) -> str:
    """The provider's bill beside our estimate, once it has been read."""
    if "billed_usd" not in deployment:
        return ""
    return f" (billed{sep}${float(deployment['billed_usd']):.2f})"


def _resumed(
    client: httpx.Client,
    deployment_id: str,
    route: str,
    params: Callable[[], dict[str, Any]],
    *,
    what: str,
    say: Callable[[str], None],
    at_end: Callable[[], str | None],
) -> Generator[dict[str, Any], None, None]:
    """The data of each event of the deployment's server-sent event stream `route`, read
    again from `params()` (where the caller has got to) when it is cut: a retryable error
    frame, a lost connection, a 5xx. Gives up after RECONNECTS failures in a row, waiting
    longer each time (`say` tells why). A stream that ends asks `at_end`: None stops, "" reads
    on at once, any other text is why it counts as a failure."""
    failures = 0
    while True:
        try:
            with client.stream(
                "GET",
                f"/v1/deployments/{deployment_id}/{route}",
                params=params(),
                timeout=WATCH_TIMEOUT,
            ) as response:
                if 400 <= response.status_code < 500:
                    response.read()
                    checked(response)
                if response.status_code >= 500:
                    raise httpx.RemoteProtocolError(f"HTTP {response.status_code}")
                reason = None
                for kind, data in _sse(response.iter_lines()):
                    failures = 0
                    if kind == "error":
                        error = data.get("error", {})
                        if error.get("status") not in RETRYABLE:
                            raise CliError(f"{what} failed: {error.get('message', data)}")
                        reason = f"{what} was cut: {error.get('message', '')}"
                        break
                    yield data
            if reason is None:
                reason = at_end()
                if reason is None:
                    return
                if not reason:
                    continue
        except httpx.TransportError as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
        failures += 1
        if failures > RECONNECTS:
            raise CliError(f"lost {what} of {deployment_id} ({reason}); gave up")
        delay = min(2.0 ** (failures - 1), 10.0)
        say(f"({reason}; reconnecting in {delay:g} s)")
        time.sleep(delay)


def follow(client: httpx.Client, deployment_id: str) -> int:
    """Watch until the run ends; the exit status: 0 succeeded, 1 failed or cancelled."""
    bar = tqdm(desc=deployment_id, unit="step", file=sys.stderr, dynamic_ncols=True)
    after = 0
    watch = _resumed(
        client,
        deployment_id,
        "watch",
        lambda: {"after_sequence": after},
        what="the watch",
        say=lambda line: bar.write(line, file=sys.stderr),
        at_end=lambda: "the stream ended before the run did",
    )
    try:
        with closing(watch):
            for data in watch:
                for event in data.get("events", []):
                    after = max(after, int(event.get("sequence", 0)))
                    bar.write(_event_line(event), file=sys.stderr)
                deployment = data.get("deployment") or {}
                progress = deployment.get("progress") or {}
                if total := int(progress.get("total_steps", 0)):
                    bar.total = total
                bar.n = int(progress.get("step", 0))
                bar.set_postfix_str(_postfix(deployment))
                if deployment.get("state") in TERMINAL:
                    bar.close()
                    return _finish(deployment)
        raise CliError(f"the watch of {deployment_id} ended before the run did")
    except KeyboardInterrupt:
        bar.close()
        _say(
            f"\nstopped watching; {deployment_id} goes on. "
            f"To stop it: tunelab deploy cancel {deployment_id}"
        )
        return 130
    finally:
        bar.close()


def _finish(deployment: dict[str, Any]) -> int:
    state = deployment.get("state", "")
    progress = deployment.get("progress") or {}
    summary = f"{deployment.get('id', '')} {state}"
    if progress.get("step"):
        summary += (
            f": step {progress['step']}/{progress.get('total_steps', '?')}, "
            f"loss={float(progress.get('loss', 0)):.4f}"
        )
    summary += f", cost ${float(deployment.get('cost_usd', 0)):.2f}{_billed(deployment, ' ')}"
    _say(summary)
    if state == "succeeded":
        return 0
    if error := deployment.get("error"):
        line = f"{error.get('code', '')}: {error.get('message', '')}"
        if error.get("exit_code"):
            line += f" (exit code {error['exit_code']})"
        _say(line)
        if tail := error.get("log_tail"):
            _say("last lines of the log:")
            for entry in tail:
                _say(f"  {entry}")
    return 1


def cmd_watch(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        sys.exit(follow(client, args.id))


def show_logs(client: httpx.Client, deployment_id: str, *, follow: bool) -> None:
    """Print the run's log lines to stdout; with `follow`, new ones too until the run is over.
    A stream that is cut (the service restarted, its time ran out) is resumed after the last
    line printed, so no line is printed twice; a gap in the numbers is said on stderr."""
    after = 0

    def at_end() -> str | None:
        if not follow or _state(client, deployment_id) in TERMINAL:
            return None
        return ""  # the stream's time ran out, not the run: carry on at once

    lines = _resumed(
        client,
        deployment_id,
        "logs",
        lambda: {"follow": "true" if follow else "false", "after_sequence": after},
        what="the log stream",
        say=_say,
        at_end=at_end,
    )
    with closing(lines):
        for data in lines:
            after = _print_lines(data.get("lines", []), after)


def _print_lines(lines: list[dict[str, Any]], after: int) -> int:
    """Print the lines past `after` (a line is never printed twice); the last one's number."""
    for line in lines:
        sequence = int(line.get("sequence", 0))
        if sequence <= after:
            continue
        if sequence > after + 1:
            _say(f"({sequence - after - 1} lines not kept here)")
        print(line.get("text", ""), flush=True)
        after = sequence
    return after


def _state(client: httpx.Client, deployment_id: str) -> str:
    return str(checked(client.get(f"/v1/deployments/{deployment_id}")).get("state", ""))


def cmd_logs(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        try:
            show_logs(client, args.id, follow=args.follow)
        except KeyboardInterrupt:
            sys.exit(130)


def cmd_list(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        token, shown = "", 0
        while True:
            page = checked(
                client.get("/v1/deployments", params={"page_token": token} if token else {})
            )
            for item in page.get("deployments", []):
                print(
                    f"{item['id']}  {item.get('state', ''):<12} {item.get('provider', ''):<7} "
                    f"{item.get('method', ''):<4} ${float(item.get('cost_usd', 0)):>7.2f}  "
                    f"{item.get('dataset_id', '')}"
                )
                shown += 1
            token = page.get("next_page_token", "")
            if not token:
                if not shown:
                    _say("no deployments yet")
                return


def cmd_get(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        print_json(checked(client.get(f"/v1/deployments/{args.id}")))


def cmd_cancel(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        deployment = checked(client.post(f"/v1/deployments/{args.id}/cancel", json={}))
        print(f"{deployment['id']} {deployment.get('state', '')}")


def cmd_events(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        token = ""
        while True:
            page = checked(
                client.get(
                    f"/v1/deployments/{args.id}/events",
                    params={"page_token": token} if token else {},
                )
            )
            for event in page.get("events", []):
                print(_event_line(event))
            token = page.get("next_page_token", "")
            if not token:
                return


def cmd_output(args: argparse.Namespace) -> None:
    """Download what the run trained, checking its SHA-256; written next to nothing else."""
    target = Path(args.output or f"{args.id}-output.tar.gz")
    partial = target.with_name(target.name + ".part")
    with (
        api_client(args) as client,
        client.stream("GET", f"/v1/deployments/{args.id}/output") as reply,
    ):
        if reply.status_code >= 400:
            reply.read()
            checked(reply)
        expected = reply.headers.get("x-checksum-sha256", "")
        total = int(reply.headers.get("content-length", 0)) or None
        digest = hashlib.sha256()
        with (
            partial.open("wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=target.name, file=sys.stderr) as bar,
        ):
            for chunk in reply.iter_bytes():
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if expected and digest.hexdigest() != expected:
        partial.unlink()
        raise CliError(f"the download's sha256 is {digest.hexdigest()}, expected {expected}")
    partial.replace(target)
    print(target)


def cmd_keys_set(args: argparse.Namespace) -> None:
    # Never from the command line: argv ends up in shell history and in `ps`.
    if sys.stdin.isatty():
        key = getpass.getpass(f"{args.provider} API key (not echoed): ")
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        raise CliError("no key given: type it at the prompt or pipe it on stdin")
    with api_client(args) as client:
        checked(client.put(f"/v1/provider-keys/{args.provider}", json={"api_key": key}))
    _say(f"{args.provider} key stored (ends in {key[-4:]})")


def cmd_keys_list(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        for key in checked(client.get("/v1/provider-keys")).get("provider_keys", []):
            print(f"{key['provider']:<8} ...{key['last4']}  set {key.get('updated_at', '')}")


def cmd_keys_delete(args: argparse.Namespace) -> None:
    with api_client(args) as client:
        checked(client.delete(f"/v1/provider-keys/{args.provider}"))
    _say(f"{args.provider} key deleted")


def register(commands: Any) -> None:
    """Add `deploy` and its actions to the root parser's subcommands."""
    deploy = commands.add_parser("deploy", help="launch training runs and follow them")
    sub = deploy.add_subparsers(dest="action", required=True)

    create = sub.add_parser("create", help="pre-flight checks, then launch a training run")
    create.add_argument("dataset_id")
    create.add_argument(
        "--provider",
        choices=["local", "container", "runpod"],
        default="local",
        help="local: a process here; container: a hardened container here (Docker or Podman "
        "API); runpod: a rented GPU pod",
    )
    create.add_argument("--method", choices=["sft", "dpo"], default="sft")
    create.add_argument(
        "--model", help="base model (a Hugging Face id; 'tiny' for local and container)"
    )
    create.add_argument("--epochs", type=int)
    create.add_argument("--learning-rate", type=float)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--max-steps", type=int)
    create.add_argument("--gpu", help="GPU type, e.g. 'NVIDIA RTX A4000' (runpod)")
    create.add_argument(
        "--gpu-count", type=int, help="GPUs (runpod: 1 by default; container: the host's, none)"
    )
    create.add_argument("--cloud", choices=["secure", "community"], default="secure")
    create.add_argument("--spot", action="store_true", help="interruptible capacity")
    create.add_argument("--max-minutes", type=int, default=60, help="runtime limit (60)")
    create.add_argument("--max-cost", type=float, default=5.0, help="cost limit in USD (5)")
    create.add_argument("--watch", action="store_true", help="follow the run until it ends")
    create.add_argument("--dry-run", action="store_true", help="stop after the checks")
    create.set_defaults(func=cmd_create)

    watch = sub.add_parser("watch", help="follow a run live until it ends")
    watch.add_argument("id")
    watch.set_defaults(func=cmd_watch)
    logs = sub.add_parser("logs", help="a run's log lines (credentials masked)")
    logs.add_argument("id")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="print new lines until the run ends"
    )
    logs.set_defaults(func=cmd_logs)
    sub.add_parser("list", help="your runs, newest first").set_defaults(func=cmd_list)
    for name, func, text in (
        ("get", cmd_get, "a run, as JSON"),
        ("cancel", cmd_cancel, "stop a run and its pod"),
        ("events", cmd_events, "a run's event log, oldest first"),
    ):
        one = sub.add_parser(name, help=text)
        one.add_argument("id")
        one.set_defaults(func=func)
    output = sub.add_parser("output", help="download what a run trained (.tar.gz)")
    output.add_argument("id")
    output.add_argument("-o", "--output", help="file to write (default: ID-output.tar.gz)")
    output.set_defaults(func=cmd_output)

    keys = commands.add_parser("keys", help="your GPU provider API keys (stored encrypted)")
    actions = keys.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("set", cmd_keys_set, "store a key, read from a prompt or stdin"),
        ("delete", cmd_keys_delete, "forget a key"),
    ):
        one = actions.add_parser(name, help=text)
        one.add_argument("provider", choices=["runpod", "huggingface"])
        one.set_defaults(func=func)
    actions.add_parser("list", help="the keys set, masked").set_defaults(func=cmd_keys_list)
