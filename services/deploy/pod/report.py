"""The pod's side of the report route: tells the control plane what the run is doing.

Embedded in the bootstrap script and run by the pod's own Python, so it uses the standard
library only. It never makes the run fail: when the control plane cannot be reached it says so
and carries on (the control plane watches the pod itself too).

    report.py PHASE [--message M] [--exit-code N] [--log FILE] [--info KEY=VALUE ...]
        exit status 0; RUN_OVER (3) when the control plane says the run is over (not for
        succeeded and failed: that is their answer), NOT_DELIVERED (4) when it did not land
    report.py heartbeat            (the phase from $TUNELAB_WORK_DIR/phase)
    report.py relay --log FILE     (stdin to stdout and FILE; progress lines become reports)
    report.py config JSON DATASET OUTPUT_DIR   (prints the trainer's config.json)

Every report first sends the pod's log lines the control plane does not have yet
($TUNELAB_WORK_DIR/bootstrap.log: the bootstrap's own lines and the trainer's), and so does the
relay every few seconds (`ship_log`), from a thread of its own.

Environment: TUNELAB_REPORT_URL, TUNELAB_JOB_TOKEN.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

PROGRESS_PREFIX = "TUNELAB_PROGRESS "
PHASES = ("starting", "downloading", "training", "succeeded", "failed")
FINAL_PHASES = ("succeeded", "failed")
# Why a run failed, where the pod knows (the control plane makes each an error code).
REASONS = ("gpu_unavailable", "torch_mismatch")
RUN_OVER = 3
NOT_DELIVERED = 4
PROGRESS_FIELDS = ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm")
TAIL_LINES = 40
MIN_INTERVAL_SECONDS = 2.0
GPU_SAMPLE_SECONDS = 15.0
# The pod's log goes to the control plane in numbered batches (`ship_log`).
LOG_FILE = "bootstrap.log"
LOG_STATE_FILE = "log.sent"
LOG_BATCH_LINES = 200
LOG_BATCH_BYTES = 256 * 1024
LOG_BATCHES_PER_CALL = 10
LOG_BACKLOG_LINES = 5000
LOG_INTERVAL_SECONDS = 2.0
LOG_RETRY_SECONDS = 30.0
MAX_LINE_CHARS = 1000
_LOG_HEAD_BYTES = 64
_READ_LIMIT = 64 * 1024


def post(
    report: dict[str, Any], attempts: int = 3, url: str | None = None, *, over: bool = False
) -> dict[str, Any] | None:
    """POST one report (or another body to `url`); retried on network errors, 429 and 5xx.
    None when it could not land. With `over`, the refusal of a run that is over (RUN_FINISHED)
    is an answer too: {"state": its state, "stop": True}."""
    url = url or os.environ["TUNELAB_REPORT_URL"]
    body = json.dumps(report).encode()
    headers = {
        "Authorization": "Bearer " + os.environ["TUNELAB_JOB_TOKEN"],
        "Content-Type": "application/json",
        "User-Agent": "tunelab-pod/1",
    }
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        delay = 2.0**attempt
        try:
            with urllib.request.urlopen(request, timeout=15) as answer:  # noqa: S310
                reply: dict[str, Any] = json.loads(answer.read() or b"{}")
                return reply
        except urllib.error.HTTPError as exc:
            error = _error_body(exc)
            detail = str(
                error.get("message") or (exc.reason if isinstance(exc.reason, str) else "")
            )
            if exc.code < 500 and exc.code != 429:
                print(f"tunelab: report refused ({exc.code}): {detail}", file=sys.stderr)
                if over and error.get("reason") == "RUN_FINISHED":
                    return {"state": _finished_state(error), "stop": True}
                return None
            problem = f"{exc.code} {detail}"
            delay = _retry_after(exc) or delay
        except (OSError, ValueError) as exc:
            problem = type(exc).__name__
        if attempt + 1 < attempts:
            time.sleep(delay)
    print(f"tunelab: report not delivered ({problem})", file=sys.stderr)
    return None


def _retry_after(exc: urllib.error.HTTPError) -> float:
    """The wait a 429 or 503 asks for (whole seconds), at most a minute; 0 when none."""
    value = (exc.headers.get("Retry-After") or "").strip() if exc.headers else ""
    return float(min(int(value), 60)) if value.isdigit() else 0.0


def _error_body(exc: urllib.error.HTTPError) -> dict[str, Any]:
    """The "error" object of the gateway's JSON error body; {} where there is none."""
    try:
        error = json.loads(exc.read())["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return error if isinstance(error, dict) else {}


def _finished_state(error: dict[str, Any]) -> str:
    """A finished run's state, from the refusal's ErrorInfo metadata."""
    for detail in error.get("details") or []:
        metadata = detail.get("metadata") if isinstance(detail, dict) else None
        if isinstance(metadata, dict) and isinstance(metadata.get("state"), str):
            return str(metadata["state"])
    return "over"


def tail(path: str | None, lines: int = TAIL_LINES) -> list[str]:
    if not path:
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n")[:500] for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def gpu_sample() -> dict[str, float]:
    """GPU utilisation and memory in use, summed over the pod's GPUs, where nvidia-smi runs."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        rows = [[float(v) for v in line.split(",")] for line in out.splitlines() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    if not rows:
        return {}
    return {
        "gpu_utilization_percent": sum(r[0] for r in rows) / len(rows),
        "gpu_memory_used_gb": sum(r[1] for r in rows) / 1024,
    }


def parse_progress(line: str) -> dict[str, float] | None:
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        data = json.loads(line[len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    progress = {}
    for key in PROGRESS_FIELDS:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            progress[key] = value
    return progress or None


class _Shipped(NamedTuple):
    """How far the log has been sent: the byte offset past the last line sent, that line's
    number, and the log's first bytes then (hex): a log started over has other ones."""

    offset: int = 0
    line: int = 0
    head: str = ""


def ship_log(*, wait: bool = True, attempts: int = 3) -> bool:
    """Send the log's lines the control plane does not have yet, numbered, in batches of at
    most LOG_BATCH_LINES lines and LOG_BATCH_BYTES; each line is cut to MAX_LINE_CHARS. One
    process sends at a time (a lock): with `wait` False, one that finds another sending leaves
    it to that one. Lines go up to the last complete one; past LOG_BACKLOG_LINES unsent ones
    the oldest are skipped (the control plane sees the gap in the numbers). A batch that was
    not delivered is sent again next time with the same numbers, and stored once. False when
    one was not delivered."""
    work_dir = os.environ.get("TUNELAB_WORK_DIR", "")
    url = os.environ.get("TUNELAB_REPORT_URL", "")
    if not work_dir or not url:
        return True
    url = url.rsplit("/", 1)[0] + "/logs"
    with open(os.path.join(work_dir, LOG_STATE_FILE), "a+", encoding="utf-8") as state:
        try:
            fcntl.flock(state, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return True
        state.seek(0)
        shipped = _read_shipped(state.read())
        try:
            with open(os.path.join(work_dir, LOG_FILE), "rb") as log:
                shipped, pending = _unsent(log, shipped)
        except OSError:
            return True
        for count, batch in enumerate(_batches(pending)):
            if count == LOG_BATCHES_PER_CALL:
                break  # the rest goes next time
            body = {"first_line": batch[0][0], "lines": [text for _, text, _ in batch]}
            if post(body, attempts, url) is None:
                return False
            shipped = shipped._replace(line=batch[-1][0], offset=batch[-1][2])
            state.seek(0)
            state.truncate()
            state.write(json.dumps(shipped._asdict()))
            state.flush()
    return True


def _read_shipped(text: str) -> _Shipped:
    try:
        data = json.loads(text)
        return _Shipped(int(data["offset"]), int(data["line"]), str(data["head"]))
    except (ValueError, KeyError, TypeError):
        return _Shipped()


def _unsent(log: BinaryIO, shipped: _Shipped) -> tuple[_Shipped, list[tuple[int, str, int]]]:
    """The log's complete lines past what was sent, as (number, text, offset past it); a log
    that was started over is read from its start, its lines numbered on from the last sent."""
    head = log.read(_LOG_HEAD_BYTES).hex()
    if not head.startswith(shipped.head) or os.fstat(log.fileno()).st_size < shipped.offset:
        shipped = _Shipped(0, shipped.line, "")
    shipped = shipped._replace(head=head)
    log.seek(shipped.offset)
    pending: deque[tuple[str, int]] = deque(maxlen=LOG_BACKLOG_LINES)
    seen = 0
    for raw, end in _complete_lines(log):
        seen += 1
        pending.append((_clean(raw), end))
    first = shipped.line + 1 + seen - len(pending)
    return shipped, [(first + i, text, end) for i, (text, end) in enumerate(pending)]


def _complete_lines(log: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Each line that has its newline: its first _READ_LIMIT bytes (it is cut shorter
    anyway), and the offset past it. A line still being written is left for next time."""
    while True:
        line = piece = log.readline(_READ_LIMIT)
        while piece and not piece.endswith(b"\n"):
            if len(piece) < _READ_LIMIT:
                return
            piece = log.readline(_READ_LIMIT)
        if not piece:
            return
        yield line, log.tell()


def _clean(raw: bytes) -> str:
    """The line as a terminal leaves it (what follows the last carriage return: progress bars
    redraw themselves with them), cut to MAX_LINE_CHARS."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n").rpartition("\r")[2]
    return text[:MAX_LINE_CHARS]


def _batches(pending: list[tuple[int, str, int]]) -> Iterator[list[tuple[int, str, int]]]:
    batch: list[tuple[int, str, int]] = []
    size = 0
    for item in pending:
        cost = len(json.dumps(item[1])) + 2
        if batch and (len(batch) == LOG_BATCH_LINES or size + cost > LOG_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield batch


def _ship_quietly(*, wait: bool = True, attempts: int = 3) -> bool:
    """`ship_log`, which must never stop a report or the relay."""
    try:
        return ship_log(wait=wait, attempts=attempts)
    except Exception as exc:
        print(f"tunelab: log lines not sent: {type(exc).__name__}", file=sys.stderr)
        return False


def relay(log_path: str) -> None:
    """Copy the trainer's output through, to stdout and the log, and hand each line to a
    `_Sender`, which forwards progress and the log's new lines from its own thread: a slow
    control plane never holds up the reading, so the trainer never blocks on its print while
    the GPUs bill. Reads to the end whatever happens, so the trainer never dies of a broken
    pipe; what is left to send goes before the relay ends."""
    sender = _Sender()
    try:
        with open(log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in sys.stdin.buffer:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                log.write(line + "\n")
                log.flush()
                sender.hand(parse_progress(line))
    finally:
        sender.close()


class _Sender:
    """Sends, from a daemon thread, what the relay hands it: progress at most every
    MIN_INTERVAL_SECONDS (the latest wins, and the last one always goes), and the log's new
    lines every LOG_INTERVAL_SECONDS or LOG_BATCH_LINES lines (after a failure, not again for
    LOG_RETRY_SECONDS). When to send is decided as each line is handed over, as the lines
    come; a call that is slow to answer only makes the next one wait, and cover more."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._unsent = 0  # lines logged since the last shipment was asked for
        self._ship_at = 0.0
        self._shipping = True  # the last shipment landed
        self._progress: dict[str, float] | None = None  # the latest, not yet sent
        self._progress_at = 0.0
        self._gpu: dict[str, float] = {}
        self._gpu_at = -GPU_SAMPLE_SECONDS
        self._ship = self._send = self._closed = self._busy = False
        self._thread = threading.Thread(target=self._run, name="tunelab-sender", daemon=True)
        self._thread.start()

    def hand(self, progress: dict[str, float] | None) -> None:
        """One more line in the log, with its progress where it is a progress line."""
        with self._changed:
            now = time.monotonic()
            self._unsent += 1
            if now >= self._ship_at or (self._shipping and self._unsent >= LOG_BATCH_LINES):
                self._ship, self._unsent = True, 0
                self._ship_at = now + LOG_INTERVAL_SECONDS
            if progress is not None:
                self._progress = progress
                if now - self._progress_at >= MIN_INTERVAL_SECONDS:
                    self._send, self._progress_at = True, now
            if self._ship or self._send:
                self._changed.notify()

    def settle(self) -> None:
        """Waits until what was asked for has been sent or has failed (tests use it to keep
        the sending in step with the lines)."""
        with self._changed:
            self._changed.wait_for(lambda: not (self._ship or self._send or self._busy))

    def close(self) -> None:
        """Sends the last progress and the lines left, then returns."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._ship or self._send or self._closed)
                closed = self._closed
                ship = self._ship or (closed and self._unsent > 0 and self._shipping)
                progress = self._progress if self._send or closed else None
                if progress is not None:
                    self._progress = None
                self._ship = self._send = False
                self._busy = True
            if ship:
                landed = _ship_quietly(wait=False, attempts=1)
                with self._changed:
                    self._shipping = landed
                    if not landed:
                        self._ship_at = time.monotonic() + LOG_RETRY_SECONDS
            if progress is not None:
                if time.monotonic() - self._gpu_at >= GPU_SAMPLE_SECONDS:
                    self._gpu, self._gpu_at = gpu_sample(), time.monotonic()
                _send_progress(progress, self._gpu)
            with self._changed:
                self._busy = False
                self._changed.notify_all()
            if closed:
                return


def _send_progress(progress: dict[str, float], gpu: dict[str, float]) -> None:
    try:
        post({"phase": "training", "progress": {**progress, **gpu}}, attempts=2)
    except Exception as exc:  # the relay must keep reading whatever goes wrong
        print(f"tunelab: progress report failed: {type(exc).__name__}", file=sys.stderr)


def config(spec_json: str, dataset: str, output_dir: str) -> None:
    spec = json.loads(spec_json)
    spec.update(dataset_path=os.path.abspath(dataset), output_dir=os.path.abspath(output_dir))
    print(json.dumps(spec, indent=2))


def main(argv: list[str]) -> int:
    if argv[:1] == ["relay"]:
        parser = argparse.ArgumentParser(prog="report.py relay")
        parser.add_argument("--log", required=True)
        relay(parser.parse_args(argv[1:]).log)
        return 0
    if argv[:1] == ["config"] and len(argv) == 4:
        config(*argv[1:])
        return 0
    if argv[:1] == ["heartbeat"]:
        try:
            with open(os.path.join(os.environ["TUNELAB_WORK_DIR"], "phase")) as handle:
                phase = handle.read().strip()
        except (KeyError, OSError):
            phase = "starting"
        argv = [phase]
    parser = argparse.ArgumentParser(prog="report.py")
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--message", default="")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--reason", default="", choices=("", *REASONS))
    parser.add_argument("--log")
    parser.add_argument("--info", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"phase": args.phase}
    if args.message:
        report["message"] = args.message
    if args.exit_code:
        report["exit_code"] = args.exit_code
    if args.reason:
        report["reason"] = args.reason
    if args.phase == "failed":
        report["log_tail"] = tail(args.log)
    if args.info:
        report["system_info"] = dict(item.partition("=")[::2] for item in args.info)
    _ship_quietly()  # the lines logged so far land before what the report changes
    reply = post(report, over=True)
    if reply is None:
        return NOT_DELIVERED
    if reply.get("stop") and args.phase not in FINAL_PHASES:
        print(f"tunelab: the control plane says the run is {reply.get('state')}", file=sys.stderr)
        return RUN_OVER
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
