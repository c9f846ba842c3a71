"""Domain objects to protobuf messages."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.deploy.checks import Check, Status
from services.deploy.preflight import Estimate
from services.deploy.store import Deployment, Event, MetricPoint, Output, ProviderKey
from tunelab.deploy.v1 import deployments_pb2 as pb

_CHECK_STATUS = {
    Status.PASS: pb.CHECK_STATUS_PASS,
    Status.WARN: pb.CHECK_STATUS_WARN,
    Status.FAIL: pb.CHECK_STATUS_FAIL,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def deployment(d: Deployment) -> pb.Deployment:
    spec = d.spec
    message = pb.Deployment(
        id=d.id,
        state=d.state.to_proto(),
        provider=spec.provider,
        dataset_id=spec.dataset_id,
        method=pb.TrainingMethod.Value(f"TRAINING_METHOD_{spec.method.upper()}"),
        base_model=spec.base_model,
        hyperparameters=pb.Hyperparameters(**asdict(spec.hyperparameters)),
        limits=pb.Limits(
            max_runtime_minutes=spec.max_runtime_minutes,
            max_cost_usd=spec.max_cost_usd,
            heartbeat_timeout_minutes=spec.heartbeat_timeout_minutes,
        ),
        cost_usd=d.cost_usd,
        hourly_usd=d.hourly_usd,
        progress=progress(d.progress),
        pod_id=d.pod_id or "",
        gpu_type=d.gpu_type or "",
        image=spec.image,
        created_at=timestamp(d.created_at),
        updated_at=timestamp(d.updated_at),
        started_at=timestamp(d.started_at),
        finished_at=timestamp(d.finished_at),
        last_report_at=timestamp(d.last_report_at),
        system_info=d.system_info,
    )
    if d.billed_usd is not None:
        message.billed_usd = d.billed_usd
        if billed_at := timestamp(d.billed_at):
            message.billed_at.CopyFrom(billed_at)
    if spec.provider == "container" and spec.gpu.count:
        message.gpu.CopyFrom(pb.GpuSpec(count=spec.gpu.count))
    elif spec.provider == "runpod":
        message.gpu.CopyFrom(
            pb.GpuSpec(
                type=spec.gpu.type,
                count=spec.gpu.count,
                cloud=pb.CLOUD_COMMUNITY if spec.gpu.cloud == "community" else pb.CLOUD_SECURE,
                spot=spec.gpu.spot,
                fallback_types=spec.gpu.fallback_types,
                bid_per_gpu_usd=spec.gpu.bid_per_gpu_usd or 0.0,
            )
        )
    if d.output is not None:
        message.output.CopyFrom(output(d.output))
    if d.error is not None:
        message.error.CopyFrom(
            pb.DeploymentError(
                code=d.error.code,
                message=d.error.message,
                exit_code=d.error.exit_code or 0,
                log_tail=d.error.log_tail,
            )
        )
    return message


def output(o: Output) -> pb.Output:
    return pb.Output(size_bytes=o.size_bytes, sha256=o.sha256, created_at=timestamp(o.created_at))


def progress(values: dict[str, float]) -> pb.Progress:
    message = pb.Progress()
    for name, value in values.items():
        if name in ("step", "total_steps"):
            setattr(message, name, int(value))
        elif name in pb.Progress.DESCRIPTOR.fields_by_name:
            setattr(message, name, float(value))
    return message


def event(e: Event) -> pb.DeploymentEvent:
    message = pb.DeploymentEvent(
        sequence=e.sequence, time=timestamp(e.occurred_at), kind=e.kind, message=e.message
    )
    if e.state is not None:
        message.state = e.state.to_proto()
    return message


def metric(point: MetricPoint) -> pb.MetricPoint:
    return pb.MetricPoint(time=timestamp(point.reported_at), progress=progress(point.progress))


def check(c: Check) -> pb.PreflightCheck:
    return pb.PreflightCheck(name=c.name, status=_CHECK_STATUS[c.status], message=c.message)


def estimate(e: Estimate) -> pb.CostEstimate:
    return pb.CostEstimate(
        hourly_usd=e.hourly_usd,
        max_total_usd=e.max_total_usd,
        max_minutes=e.max_minutes,
        gpu_type=e.gpu_type,
    )


def provider_key(key: ProviderKey) -> pb.ProviderKey:
    return pb.ProviderKey(
        provider=key.provider,
        last4=key.last4,
        created_at=timestamp(key.created_at),
        updated_at=timestamp(key.updated_at),
    )
