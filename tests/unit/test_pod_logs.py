"""The pod's log shipping (report.ship_log and the relay) against a real HTTP server: numbered
batches bounded in lines and bytes, sent again with the same numbers after a failure, a
backlog bounded, a log started over numbered on, and the relay's pace, which a slow control
plane never holds up."""

from __future__ import annotations

import fcntl
import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from services.deploy.pod import report


class Recorder(BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []  # answered in turn; 200 once they run out
    seen: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    gate: ClassVar[threading.Event | None] = None  # where set, no answer until it opens
    asked = threading.Event()

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        self.asked.set()
        if self.gate is not None:
            self.gate.wait()
        self.seen.append((self.path, body))
        status = self.statuses.pop(0) if self.statuses else 200
        reply: dict[str, Any] = {"error": {"message": "no"}}
        if status == 200:
            lines = body.get("lines", [])
            reply = {"last_line": body.get("first_line", 0) + len(lines) - 1}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class Pod:
    work_dir: Path
    sleeps: list[float] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.work_dir / report.LOG_FILE

    def write(self, *lines: str, end: str = "\n") -> None:
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + end for line in lines))

    def batches(self) -> list[dict[str, Any]]:
        return [body for path, body in Recorder.seen if path.endswith("/logs")]

    def received(self) -> dict[int, str]:
        """Line number to text, as a control plane that keeps the first copy would."""
        lines: dict[int, str] = {}
        for body in self.batches():
            for offset, text in enumerate(body["lines"]):
                lines.setdefault(body["first_line"] + offset, text)
        return lines


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pod]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_port}/v1/deployments/dep_x"
    monkeypatch.setenv("TUNELAB_REPORT_URL", f"{base}/reports")
    monkeypatch.setenv("TUNELAB_JOB_TOKEN", "tljb_test")
    monkeypatch.setenv("TUNELAB_WORK_DIR", str(tmp_path))
    running = Pod(tmp_path)
    monkeypatch.setattr(time, "sleep", running.sleeps.append)
    Recorder.seen, Recorder.statuses, Recorder.gate = [], [], None
    Recorder.asked.clear()
    yield running
    httpd.shutdown()


def test_lines_go_numbered_in_bounded_batches_and_only_once(pod: Pod) -> None:
    pod.write(*(f"line {i}" for i in range(1, 451)))
    pod.write("half a line", end="")  # still being written: it waits
    assert report.ship_log()
    assert [(b["first_line"], len(b["lines"])) for b in pod.batches()] == [
        (1, 200),
        (201, 200),
        (401, 50),
    ]
    assert pod.received()[450] == "line 450"
    pod.write(" and its end", "line 452")
    assert report.ship_log()
    assert [(b["first_line"], b["lines"]) for b in pod.batches()[3:]] == [
        (451, ["half a line and its end", "line 452"])
    ]
    assert report.ship_log()  # nothing new: nothing sent
    assert len(pod.batches()) == 4
    assert all(path.endswith("/v1/deployments/dep_x/logs") for path, _ in Recorder.seen)


def test_a_batch_is_bounded_in_bytes_and_a_line_is_cut(pod: Pod) -> None:
    huge = "x" * 3_000_000  # past the read limit too
    pod.write(*["é" * 5000] * 100, huge, "after", "a 10%\r 50%\r100% done")
    assert report.ship_log()
    bodies = pod.batches()
    assert all(len(json.dumps(b)) <= report.LOG_BATCH_BYTES + 100 for b in bodies)
    lines = pod.received()
    assert len(lines) == 103
    assert {len(text) for text in lines.values() if text[0] in "éx"} == {report.MAX_LINE_CHARS}
    assert lines[102] == "after"
    assert lines[103] == "100% done"  # what a terminal shows of a redrawn progress bar


def test_an_undelivered_batch_is_sent_again_with_the_same_numbers(pod: Pod) -> None:
    pod.write("one", "two")
    Recorder.statuses = [503, 503, 503]
    assert not report.ship_log()
    pod.write("three")
    assert report.ship_log()
    batches = pod.batches()
    assert [b["first_line"] for b in batches] == [1, 1, 1, 1]
    assert batches[-1]["lines"] == ["one", "two", "three"]
    Recorder.statuses = [401]  # refused outright: not retried, not marked sent either
    pod.write("four")
    assert not report.ship_log()
    assert report.ship_log()
    assert pod.batches()[-1] == {"first_line": 4, "lines": ["four"]}


def test_a_backlog_past_its_bound_skips_the_oldest_lines(pod: Pod) -> None:
    total = report.LOG_BACKLOG_LINES + 700
    pod.write(*(f"line {i}" for i in range(1, total + 1)))
    while len(pod.received()) < report.LOG_BACKLOG_LINES:
        assert report.ship_log()
    lines = pod.received()
    assert min(lines) == 701  # the gap tells the control plane that 700 lines were lost
    assert max(lines) == total
    assert lines[total] == f"line {total}"
    calls = len(pod.batches())
    assert calls == report.LOG_BACKLOG_LINES // report.LOG_BATCH_LINES


def test_a_log_started_over_is_numbered_on(pod: Pod) -> None:
    pod.write("2026-01-01T00:00:00Z first run", "more")
    assert report.ship_log()
    pod.log.write_text("2026-01-01T00:05:00Z second run\n")  # a restarted bootstrap's log
    assert report.ship_log()
    assert pod.received() == {
        1: "2026-01-01T00:00:00Z first run",
        2: "more",
        3: "2026-01-01T00:05:00Z second run",
    }


def test_one_process_sends_at_a_time(pod: Pod) -> None:
    pod.write("one")
    with (pod.work_dir / report.LOG_STATE_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert report.ship_log(wait=False)  # another one is sending: left to it
        assert pod.batches() == []
    assert report.ship_log(wait=False)
    assert pod.received() == {1: "one"}


def test_no_work_dir_or_no_log_sends_nothing(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    assert report.ship_log()  # no log written yet
    monkeypatch.delenv("TUNELAB_WORK_DIR")
    pod.write("one")
    assert report.ship_log()
    assert Recorder.seen == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def relay(pod: Pod, monkeypatch: pytest.MonkeyPatch, lines: list[tuple[float, str]]) -> Clock:
    """Run the relay over `lines`, each (seconds since the last one, text), on a fake clock,
    each line's sending over before the next line comes (the pace is the clock's alone)."""
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)

    class Lockstep(report._Sender):
        def hand(self, progress: dict[str, float] | None) -> None:
            super().hand(progress)
            self.settle()

    monkeypatch.setattr(report, "_Sender", Lockstep)

    class Stdin(io.BytesIO):
        def __iter__(self) -> Iterator[bytes]:
            for pause, text in lines:
                clock.now += pause
                yield (text + "\n").encode()

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(Stdin()))
    monkeypatch.setattr("sys.stdout", io.StringIO())
    report.relay(str(pod.log))
    return clock


def test_the_relay_sends_every_few_seconds_or_a_batch_full(
    pod: Pod, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [(0.0, "first")]  # sent at once
    lines += [(0.001, f"burst {i}") for i in range(report.LOG_BATCH_LINES)]  # a batch full
    lines += [(0.5, f"slow {i}") for i in range(8)]  # 4 s: sent after 2 s, then the rest
    relay(pod, monkeypatch, lines)
    sizes = [len(b["lines"]) for b in pod.batches()]
    assert sizes[:2] == [1, report.LOG_BATCH_LINES]
    assert sum(sizes) == len(lines)
    assert 4 <= len(sizes) <= 5  # every 2 s, and the last lines at the end of the output
    assert pod.received()[len(lines)] == "slow 7"
    assert pod.log.read_text().splitlines() == [text for _, text in lines]


def test_the_relay_waits_after_a_failure(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    Recorder.statuses = [503]  # the relay tries once
    lines = [(0.0, "first")] + [(1.0, f"later {i}") for i in range(40)]
    lines += [(0.001, f"burst {i}") for i in range(report.LOG_BATCH_LINES)]
    relay(pod, monkeypatch, lines)
    starts = [b["first_line"] for b in pod.batches()]
    # Not again for 30 s, burst or not; then from where it stopped, every 2 s.
    assert starts[:2] == [1, 1]
    assert len(pod.batches()[1]["lines"]) == 31
    assert pod.received()[len(lines)] == f"burst {report.LOG_BATCH_LINES - 1}"


def test_a_control_plane_that_does_not_answer_never_holds_up_the_relay(
    pod: Pod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer would block on its print, the GPUs billing, were the relay to wait for
    the control plane: it reads the whole output while the control plane holds every call."""
    gate = Recorder.gate = threading.Event()
    opener = urllib.request.urlopen
    # Without the 15 s timeout: a call lasts exactly as long as the control plane holds it.
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: opener(request))
    total = 3 * report.LOG_BATCH_LINES
    progress = f'{report.PROGRESS_PREFIX}{{"step": {total}, "total_steps": {total}}}'
    lines = [f"line {i}" for i in range(1, total)] + [progress]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode())))
    monkeypatch.setattr("sys.stdout", io.StringIO())
    relay = threading.Thread(target=report.relay, args=(str(pod.log),), daemon=True)
    relay.start()
    try:
        assert Recorder.asked.wait(30)
        deadline = time.monotonic() + 30
        while len(pod.log.read_text().splitlines()) < total and time.monotonic() < deadline:
            gate.wait(0.01)
        assert not gate.is_set()
        assert pod.log.read_text().splitlines() == lines  # all read, no call answered yet
    finally:
        gate.set()
    relay.join(30)
    assert not relay.is_alive()
    # What was held is sent once the control plane answers: every line, and the progress.
    assert sorted(pod.received()) == list(range(1, total + 1))
    reports = [body for path, body in Recorder.seen if path.endswith("/reports")]
    assert reports[-1]["progress"]["step"] == total
