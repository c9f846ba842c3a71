"""The generated pod script run as a pod runs it (`launch_command`, the packed script in its
environment), against a stand-in control plane over real HTTP: what it does when a container
is started again in the same work directory, when the run is over before it starts, when the
GPUs it asked for are not there, and how it installs the pinned packages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.deploy.pod import render, stack
from tests.fakes.gpu import fake_nvidia_smi, fake_torch

DATASET = b'{"text": "hello"}\n'
FINAL = ("succeeded", "failed")
# Stands in for the trainer: progress, an output file, and the exit status the config asks for
# (after the sleep it asks for, its process id written first).
TRAINER = textwrap.dedent(
    """\
    import json, os, pathlib, sys, time
    config = json.loads(pathlib.Path(sys.argv[1]).read_text())
    print('TUNELAB_PROGRESS {"step": 1, "total_steps": 1, "loss": 0.5}', flush=True)
    if config.get("sleep"):
        pathlib.Path(config["output_dir"], "trainer.pid").write_text(str(os.getpid()))
        time.sleep(config["sleep"])
    pathlib.Path(config["output_dir"], "model.txt").write_text("weights")
    if config.get("say"):
        print(config["say"], file=sys.stderr, flush=True)
    sys.exit(config.get("exit", 0))
    """
)


@dataclass
class ControlPlane:
    """The gateway's pod routes as the pod sees them: reports (refused with RUN_FINISHED, as
    the deploy service refuses them, once the run is over), log lines, the dataset download
    and the output upload."""

    url: str = ""
    state: str = "provisioning"
    reports: list[dict[str, Any]] = field(default_factory=list)
    downloads: int = 0
    refuse_next_final: int = 0  # final reports to refuse (as a lost one would be)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def over(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    def phases(self) -> list[str]:
        return [r["phase"] for r in self.reports]

    def transitions(self) -> list[str]:
        """The phases in order, a heartbeat's repeat of the current one left out (a slow
        download on a loaded machine sends one)."""
        found: list[str] = []
        for phase in self.phases():
            if not found or found[-1] != phase:
                found.append(phase)
        return found

    def finals(self) -> list[dict[str, Any]]:
        """The final reports (a heartbeat may still land after them: it is refused)."""
        return [r for r in self.reports if r["phase"] in FINAL]

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path.endswith("/logs"):
            return 200, {}
        with self.lock:
            self.reports.append(body)
            if self.over:
                return 400, {
                    "error": {
                        "code": 400,
                        "status": "FAILED_PRECONDITION",
                        "message": f"the run is over ({self.state})",
                        "reason": "RUN_FINISHED",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": "RUN_FINISHED",
                                "metadata": {"state": self.state},
                            }
                        ],
                    }
                }
            if body["phase"] in FINAL and self.refuse_next_final:
                self.refuse_next_final -= 1
                return 400, {"error": {"message": "not now", "reason": "INVALID_ARGUMENT"}}
            self.state = body["phase"]
            return 200, {"state": self.state, "stop": self.over}


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    control = ControlPlane()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            status, body = control.answer(self.path, json.loads(self.rfile.read(length)))
            self._send(status, json.dumps(body).encode())

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(200, b"{}")

        def do_GET(self) -> None:
            control.downloads += 1
            self._send(200, DATASET)

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    control.url = f"http://127.0.0.1:{httpd.server_port}"
    yield control
    httpd.shutdown()


def trainer(*, pip: bool = False, torch: str = stack.TORCH_VERSION) -> render.Trainer:
    if not pip:
        return render.Trainer("fake_trainer", (("fake_trainer.py", TRAINER),))
    return render.Trainer(
        "fake_trainer",
        (("fake_trainer.py", TRAINER),),
        pip_requirements=("trl==0.24.0",),
        pip_constraints=f"torch=={torch}\ntrl==0.24.0\n",
    )


class Pod:
    """One pod's work directory; each `start` is a container (re)starting there."""

    def __init__(
        self,
        folder: Path,
        plane: ControlPlane,
        spec: render.Trainer,
        *,
        heartbeat_seconds: int = 1,
        **config: Any,
    ):
        import hashlib

        self.folder = folder
        self.work = folder / "work"
        script = render.render(
            render.Bootstrap(
                deployment_id="dep_test",
                api_url=plane.url,
                dataset_sha256=hashlib.sha256(DATASET).hexdigest(),
                dataset_size=len(DATASET),
                config={"method": "sft", "base_model": "m", **config},
                trainer=spec,
                heartbeat_seconds=heartbeat_seconds,
                download_attempts=1,
            )
        )
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "TUNELAB_WORK_DIR": str(self.work),
            "TUNELAB_PYTHON": sys.executable,
            "TUNELAB_JOB_TOKEN": "tljb_test",
            "TUNELAB_DATASET_URL": f"{plane.url}/dataset",
            "TUNELAB_LINGER_SECONDS": "0",
            render.PACKED_ENV: render.pack(script),
        }

    def start(self, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            render.launch_command(),
            cwd=self.folder,
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, **env: str) -> tuple[int, str]:
        process = self.start(**env)
        output, _ = process.communicate(timeout=120)
        return process.returncode, output

    def finished(self) -> list[str]:
        return (self.work / "finished").read_text().splitlines()

    def log(self) -> str:
        return (self.work / "bootstrap.log").read_text()


def test_a_restarted_container_does_not_run_a_finished_run_again(
    tmp_path: Path, plane: ControlPlane
) -> None:
    pod = Pod(tmp_path, plane, trainer())
    code, output = pod.run()
    assert code == 0, output
    assert plane.transitions()[:3] == ["starting", "downloading", "training"]
    assert [r["phase"] for r in plane.finals()] == ["succeeded"]
    assert plane.downloads == 1
    assert pod.finished() == ["succeeded", "0", "training finished", ""]  # no reason

    code, output = pod.run()
    assert code == 0, output
    # No download, no "starting": only the final report once more, which the run refuses.
    assert plane.downloads == 1
    assert plane.phases().count("starting") == 1
    assert [r["phase"] for r in plane.finals()] == ["succeeded", "succeeded"]
    assert "the run already ended (succeeded) before this container started" in pod.log()


def test_a_failed_run_is_not_run_again_either(tmp_path: Path, plane: ControlPlane) -> None:
    pod = Pod(tmp_path, plane, trainer(), exit=2)
    code, _ = pod.run()
    assert code == 2
    (failed,) = plane.finals()
    assert failed["phase"] == "failed"
    assert failed["exit_code"] == 2
    assert pod.finished() == ["failed", "2", "training failed with exit status 2", ""]

    code, _ = pod.run()
    assert code == 2
    assert plane.downloads == 1
    assert plane.phases().count("starting") == 1
    assert [r["phase"] for r in plane.finals()] == ["failed", "failed"]


def test_a_failed_run_says_the_trainers_last_line(tmp_path: Path, plane: ControlPlane) -> None:
    said = "OSError: [Errno 30] Read-only file system: '/opt/venv/planted.py'"
    pod = Pod(tmp_path, plane, trainer(), exit=1, say=said)
    code, _ = pod.run()
    assert code == 1
    (failed,) = plane.finals()
    assert failed["message"] == f"training failed with exit status 1: {said}"


def test_a_trainer_that_finds_the_gpus_gone_fails_the_run_as_gpu_unavailable(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """The trainer's exit status, through the relay's pipe, is the run's."""
    pod = Pod(tmp_path, plane, trainer(), exit=6)
    code, _ = pod.run()
    assert code == 6
    (failed,) = plane.finals()
    assert (failed["exit_code"], failed["reason"]) == (6, "gpu_unavailable")


def test_a_run_the_control_plane_says_is_over_is_not_started(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """No marker on the disk (a fresh disk, or one lost): the starting report's refusal says
    the run is over, and nothing is downloaded or trained."""
    plane.state = "cancelled"
    pod = Pod(tmp_path, plane, trainer())
    code, output = pod.run()
    assert code == 0, output
    assert plane.phases() == ["starting"]
    assert plane.downloads == 0
    assert not (pod.work / "output" / "model.txt").exists()
    assert pod.finished()[0] == "over"
    assert "the control plane says the run is over" in pod.log()
    # Started once more: the disk says so at once, and nothing is sent at all.
    assert pod.run()[0] == 0
    assert plane.phases() == ["starting"]


def test_after_its_final_report_the_pod_waits_to_be_terminated(
    tmp_path: Path, plane: ControlPlane
) -> None:
    pod = Pod(tmp_path, plane, trainer())
    process = pod.start(TUNELAB_LINGER_SECONDS="60")
    try:
        deadline = time.monotonic() + 60
        while "succeeded" not in plane.phases() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        assert process.poll() is None, "the script exited: the container would be restarted"
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)  # as the control plane terminates it
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert plane.phases().count("succeeded") == 1


def running(group: int) -> list[int]:
    """The processes of a process group still running (a zombie has ended)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgid = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue
        if int(pgid) == group and state != "Z":
            found.append(int(stat.parent.name))
    return found


def gone(group: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while running(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(group)


def test_a_pod_stopped_during_training_stops_at_once_and_the_trainer_with_it(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """`docker stop` (and RunPod's terminate) signals the container's first process only, and
    kills everything a few seconds later: no waiting for the trainer, and no trainer left."""
    pod = Pod(tmp_path, plane, trainer(), heartbeat_seconds=60, sleep=300)
    process = pod.start(TUNELAB_LINGER_SECONDS="60")
    trainer_pid = pod.work / "output" / "trainer.pid"
    try:
        deadline = time.monotonic() + 60
        while not trainer_pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trainer_pid.exists(), "the trainer never started"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert process.returncode == 143
    assert gone(process.pid), "the trainer, the relay or the heartbeat outlived the pod"
    (failed,) = plane.finals()
    assert failed["exit_code"] == 143


def test_nothing_the_pod_started_outlives_it(tmp_path: Path, plane: ControlPlane) -> None:
    """Not even the heartbeat's sleep."""
    pod = Pod(tmp_path, plane, trainer(), heartbeat_seconds=60)
    process = pod.start()
    try:
        assert process.wait(timeout=120) == 0
        assert gone(process.pid)
    finally:
        if running(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()  # its output: open while anything it started runs


def test_a_lost_final_report_is_sent_again_while_waiting_and_the_wait_is_bounded(
    tmp_path: Path, plane: ControlPlane
) -> None:
    plane.refuse_next_final = 1
    pod = Pod(tmp_path, plane, trainer())
    started = time.monotonic()
    code, output = pod.run(TUNELAB_LINGER_SECONDS="3")
    assert code == 0, output
    assert time.monotonic() - started >= 3
    assert plane.phases().count("succeeded") == 2  # refused, then sent again: it landed
    assert plane.state == "succeeded"
    assert "not terminated after 3 s: exiting" in pod.log()


@pytest.mark.parametrize("asked", ["TUNELAB_GPU_COUNT", "RUNPOD_GPU_COUNT"])
def test_a_pod_without_the_gpus_it_asked_for_fails_at_once(
    tmp_path: Path, plane: ControlPlane, asked: str
) -> None:
    stubs = fake_torch(tmp_path / "stubs", available=False)
    driver = fake_nvidia_smi(tmp_path / "bin", cuda_version="12.2")
    pod = Pod(tmp_path, plane, trainer())
    code, output = pod.run(
        **{asked: "1"}, PYTHONPATH=str(stubs), PATH=f"{driver}:{os.environ['PATH']}"
    )
    assert code == 6, output
    assert plane.downloads == 0
    assert "downloading" not in plane.phases()
    (failed,) = plane.finals()
    assert (failed["exit_code"], failed["reason"]) == (6, "gpu_unavailable")
    assert pod.finished()[3] == "gpu_unavailable"  # a restarted container reports it again
    message = failed["message"]
    assert message.startswith("gpu_unavailable: the pod asked for 1 GPU but ")
    assert "torch.cuda.is_available() is False and torch sees 0 GPUs" in message
    assert "built for CUDA 12.8" in message
    assert "the driver runs CUDA 12.2" in message


def test_a_pod_without_a_driver_fails_at_once_too(tmp_path: Path, plane: ControlPlane) -> None:
    pod = Pod(tmp_path, plane, trainer())
    code, output = pod.run(TUNELAB_GPU_COUNT="1", PATH="/usr/bin:/bin")
    assert code == 6, output
    assert plane.downloads == 0
    assert "nvidia-smi finds no driver" in plane.finals()[0]["message"]


def fake_pip(folder: Path, status: int) -> Path:
    """A `pip` package that records how it was called (and the constraints it was given)."""
    package = folder / "pip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        textwrap.dedent(
            f"""\
            import json, pathlib, sys
            args = sys.argv[1:]
            constraints = pathlib.Path(args[args.index("--constraint") + 1]).read_text()
            pathlib.Path({str(folder / "pip.json")!r}).write_text(
                json.dumps({{"args": args, "constraints": constraints}})
            )
            if {status}:
                print("ERROR: Cannot install trl==0.24.0 (the user requested torch==2.8.0)")
            sys.exit({status})
            """
        )
    )
    return folder


def test_the_pinned_packages_are_installed_with_the_lock(
    tmp_path: Path, plane: ControlPlane
) -> None:
    stubs = fake_pip(fake_torch(tmp_path / "stubs", version="2.8.0+cu128"), status=0)
    pod = Pod(tmp_path, plane, trainer(pip=True))
    code, output = pod.run(PYTHONPATH=str(stubs))
    assert code == 0, output
    pip = json.loads((stubs / "pip.json").read_text())
    assert pip["args"][0] == "install"
    assert pip["args"][-1] == "trl==0.24.0"
    assert pip["constraints"] == "torch==2.8.0\ntrl==0.24.0\n"
    assert "--only-binary=:all:" in pip["args"]
    assert "environment: no GPU asked for; torch.cuda.is_available() is False" in pod.log()


def test_a_failed_install_fails_the_run_before_the_download(
    tmp_path: Path, plane: ControlPlane
) -> None:
    stubs = fake_pip(fake_torch(tmp_path / "stubs"), status=1)
    pod = Pod(tmp_path, plane, trainer(pip=True))
    code, _ = pod.run(PYTHONPATH=str(stubs))
    assert code == 1
    assert plane.downloads == 0
    (failed,) = plane.finals()
    assert failed["message"].startswith("pip could not install the pinned packages")
    assert any("the user requested torch==2.8.0" in line for line in failed["log_tail"])


def test_an_image_with_another_torch_fails_before_anything_is_installed(
    tmp_path: Path, plane: ControlPlane
) -> None:
    stubs = fake_pip(fake_torch(tmp_path / "stubs", version="2.4.0+cu124"), status=0)
    pod = Pod(tmp_path, plane, trainer(pip=True))
    code, _ = pod.run(PYTHONPATH=str(stubs))
    assert code == 7
    assert not (stubs / "pip.json").exists()
    assert plane.downloads == 0
    assert plane.finals()[0]["reason"] == "torch_mismatch"
    message = plane.finals()[0]["message"]
    assert re.match(r"torch_mismatch: the image has torch 2\.4\.0\+cu124, but .* 2\.8\.0", message)
