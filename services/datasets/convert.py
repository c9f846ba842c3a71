"""Domain objects of the datasets service to their protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.datasets.formats import Format
from services.datasets.store import Dataset, DownloadEvent, DownloadToken, Outcome, TokenState
from tunelab.datasets.v1 import datasets_pb2 as pb

_FORMAT = {
    Format.SFT_CHAT: pb.DATASET_FORMAT_SFT_CHAT,
    Format.DPO_PREFERENCE: pb.DATASET_FORMAT_DPO_PREFERENCE,
    Format.TEXT: pb.DATASET_FORMAT_TEXT,
    Format.INVALID: pb.DATASET_FORMAT_INVALID,
}
_STATE = {
    TokenState.ACTIVE: pb.DOWNLOAD_TOKEN_STATE_ACTIVE,
    TokenState.EXPIRED: pb.DOWNLOAD_TOKEN_STATE_EXPIRED,
    TokenState.USED_UP: pb.DOWNLOAD_TOKEN_STATE_USED_UP,
    TokenState.REVOKED: pb.DOWNLOAD_TOKEN_STATE_REVOKED,
}
_OUTCOME = {
    Outcome.GRANTED: pb.DOWNLOAD_OUTCOME_GRANTED,
    Outcome.CHECKED: pb.DOWNLOAD_OUTCOME_CHECKED,
    Outcome.REFUSED: pb.DOWNLOAD_OUTCOME_REFUSED,
}


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC).replace(tzinfo=None))
    return stamp


def dataset(d: Dataset) -> pb.Dataset:
    message = pb.Dataset(
        id=d.id,
        name=d.name,
        size_bytes=d.size_bytes,
        sha256=d.sha256,
        row_count=d.row_count,
        format=_FORMAT[d.format],
        created_at=timestamp(d.created_at),
    )
    if d.format is Format.INVALID:
        message.format_error.line = d.format_error_line or 0
        message.format_error.reason = d.format_error_reason or ""
    return message


def download_token(t: DownloadToken, now: datetime) -> pb.DownloadToken:
    message = pb.DownloadToken(
        id=t.id,
        dataset_id=t.dataset_id,
        created_at=timestamp(t.created_at),
        expires_at=timestamp(t.expires_at),
        max_uses=t.max_uses,
        use_count=t.use_count,
        state=_STATE[t.state(now)],
    )
    if t.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(t.revoked_at))
    return message


def download_event(e: DownloadEvent) -> pb.DownloadEvent:
    message = pb.DownloadEvent(
        id=e.id,
        token_id=e.token_id or "",
        dataset_id=e.dataset_id or "",
        occurred_at=timestamp(e.occurred_at),
        outcome=_OUTCOME[e.outcome],
        reason=e.reason,
        range=e.range,
        client_ip=e.client_ip,
        user_agent=e.user_agent,
        request_id=e.request_id,
        bytes_granted=e.bytes_granted or 0,
    )
    if e.bytes_sent is not None:
        message.bytes_sent = e.bytes_sent
    return message
