"""What a pod reports with its job token: its phase, progress and system, and how its run ended.

A report is checked here, then applied to the run under its lock; a run that is over takes no
more reports (the pod is told to stop)."""

from __future__ import annotations

import math
from datetime import datetime

import grpc

from services.common import redact
from services.common.errors import ServiceError, invalid_argument, unauthenticated
from services.deploy.launch import JOB_TOKENS
from services.deploy.states import State, Stop
from services.deploy.store import Change, Deployment, DeploymentStore, RunError
from tunelab.common.v1 import errors_pb2
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb

MAX_LOG_TAIL_LINES = 100
MAX_LINE_CHARS = 1000
_PHASE_STATE = {
    api.REPORT_PHASE_STARTING: State.STARTING,
    api.REPORT_PHASE_DOWNLOADING: State.DOWNLOADING,
    api.REPORT_PHASE_TRAINING: State.TRAINING,
}


async def run_of(store: DeploymentStore, deployment_id: str, job_token: str) -> Deployment:
    """The deployment whose job token this is; UNAUTHENTICATED for anything else."""
    d = await store.get_any(deployment_id) if deployment_id else None
    if d is None or not JOB_TOKENS.matches(job_token, d.job_token_hash):
        raise unauthenticated(
            "this is not the job token of that deployment: only the token its pod was given works"
        )
    return d


# What a failed report may say of why (Report.reason), and the error code it becomes.
_REASONS = {"gpu_unavailable": Stop.GPU_UNAVAILABLE, "torch_mismatch": Stop.TORCH_MISMATCH}


def finished(d: Deployment) -> ServiceError:
    """The refusal of anything more from the pod of a run that is over."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the run is over ({d.state.value}): its job token reports nothing more; stop the pod",
        errors_pb2.ERROR_REASON_RUN_FINISHED,
        {"state": d.state.value},
    )


async def record(
    store: DeploymentStore, d: Deployment, report: api.Report, now: datetime
) -> Deployment:
    """Check the report and apply it to the run; returns the run after it."""
    _check(report)

    def apply(current: Deployment) -> Change | None:
        if current.state.terminal:
            raise finished(current)
        return _apply(current, report, now)

    d, _ = await store.mutate(d.id, now, apply)
    if report.HasField("progress"):
        await store.add_metric(d.id, _progress(report.progress), now)
    return d


def _check(report: api.Report) -> None:
    if report.phase not in api.ReportPhase.values() or not report.phase:
        raise invalid_argument(
            "report.phase",
            "report.phase is required: starting, downloading, training, succeeded or failed",
        )
    if len(report.message) > 2000:
        raise invalid_argument("report.message", "report.message is longer than 2000 characters")
    if len(report.log_tail) > MAX_LOG_TAIL_LINES:
        raise invalid_argument(
            "report.log_tail", f"report.log_tail holds more than {MAX_LOG_TAIL_LINES} lines"
        )
    if report.reason and (report.phase != api.REPORT_PHASE_FAILED or report.reason not in _REASONS):
        raise invalid_argument(
            "report.reason",
            f"report.reason goes with phase failed and is one of {', '.join(_REASONS)}",
        )
    if len(report.system_info) > 32 or any(
        len(k) > 64 or len(v) > 512 for k, v in report.system_info.items()
    ):
        raise invalid_argument(
            "report.system_info", "system_info: at most 32 entries, keys 64 and values 512 long"
        )


def _progress(p: pb.Progress) -> dict[str, float]:
    """The fields set, finite ones only (a diverged loss is NaN: it is left out)."""
    values: dict[str, float] = {}
    for field, value in p.ListFields():
        if isinstance(value, int | float) and math.isfinite(value):
            values[field.name] = value
    return values


def _apply(current: Deployment, report: api.Report, now: datetime) -> Change:
    change = Change(last_report_at=now)
    if report.system_info:
        info = {k[:64]: redact.redact(v)[:512] for k, v in report.system_info.items()}
        change.system_info = {**current.system_info, **info}
    if report.HasField("progress"):
        change.progress = {**current.progress, **_progress(report.progress)}
    message = redact.redact(report.message)
    if report.phase in _PHASE_STATE and current.output is not None:
        # The pod sends its output only after training succeeded: a pod starting over after
        # that is a container restarted before its final report. Nothing is done again.
        change.end(
            current.state,
            State.SUCCEEDED,
            RunError("", "the pod's container restarted after it sent its output: done"),
        )
    elif report.phase in _PHASE_STATE:
        target = _PHASE_STATE[report.phase]
        if current.state.can_become(target):
            change.become(current.state, target, message or f"the pod reports {target.value}")
        elif message:
            change.log("report", message)
    elif report.phase == api.REPORT_PHASE_SUCCEEDED:
        change.become(current.state, State.SUCCEEDED, message or "the pod reports success")
    else:
        stop = _REASONS.get(report.reason) or (
            Stop.TRAINER_FAILED if current.state is State.TRAINING else Stop.BOOTSTRAP_FAILED
        )
        tail = tuple(redact.redact(line)[:MAX_LINE_CHARS] for line in report.log_tail)
        error = RunError(stop, message or "the pod reports failure", report.exit_code or None, tail)
        change.become(current.state, State.FAILED, error.message)
        change.error = error
    return change
