"""The CPU half of ingest: a batch's parts checked, merged with what is stored, completed and
turned into rows.

A pure function of its input (no database, no clock, no global state but the price table and
the sanitizer's memo), so that it can run in worker processes (`workers.py`) while the
service's event loop goes on receiving and writing: per span this is most of what ingest costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.sanitize import sanitize_text
from services.tracing import spans
from services.tracing.prices import PriceTable
from tunelab.tracing.v1 import spans_pb2 as pb

Key = tuple[str, str]  # (trace_id, span_id)


@dataclass(frozen=True)
class Rejected:
    index: int
    trace_id: str
    span_id: str
    field: str
    reason: str


@dataclass(frozen=True)
class Existing:
    """A stored version of a span, as ingest read it."""

    id: int
    body: str
    received_at: datetime
    updated_at: datetime


# The columns of `Prepared.inserts`, in order. Not `updated_at`: the store stamps it when it
# writes (see SpanStore._ingest).
INSERT_COLUMNS = (*spans.ROW_COLUMNS, "owner", "received_at")


@dataclass
class Prepared:
    """Rows to write: new spans (INSERT_COLUMNS), and stored spans that parts changed (by
    column name, `row_id` their id); `updated_at` is the writer's to add."""

    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    insert_tags: list[list[str]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    update_tags: dict[int, list[str]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def extend(self, other: Prepared) -> None:
        self.inserts += other.inserts
        self.insert_tags += other.insert_tags
        self.updates += other.updates
        self.update_tags.update(other.update_tags)
        self.rejected += other.rejected


def keys(batch: Sequence[pb.Span]) -> list[Key]:
    """The keys of a batch's spans whose ids can be stored at all: what to look up."""
    return list(
        {
            (span.trace_id, span.span_id)
            for span in batch
            if spans.plausible_id(span.trace_id) and spans.plausible_id(span.span_id)
        }
    )


def prepare(
    owner: str,
    parts: Sequence[tuple[int, pb.Span]],
    found: dict[Key, Existing],
    now: datetime,
    prices: PriceTable,
    *,
    own_parts: bool = False,
) -> Prepared:
    """Rows for checked parts (index in the batch, span), given what is stored of their spans.

    Parts of one span must all be in one call: they are merged in order, onto the stored
    version if there is one. Each part is checked on its own first, then the merged span.
    `own_parts`: the parts are this call's to change (parsed for it), not the caller's.
    """
    out = Prepared()
    by_key: dict[Key, list[tuple[int, pb.Span]]] = {}
    for index, part in parts:
        try:
            spans.check_part(part, now)
        except spans.Invalid as exc:
            ids = (sanitize_text(part.trace_id[:64]), sanitize_text(part.span_id[:64]))
            out.rejected.append(Rejected(index, *ids, exc.field, exc.reason))
            continue
        # Output-only fields are the service's to write, whatever a producer sends.
        del part.computed[:]
        part.ClearField("received_at")
        by_key.setdefault((part.trace_id, part.span_id), []).append((index, part))
    received_now = Timestamp()
    received_now.FromDatetime(now)
    for key, key_parts in by_key.items():
        existing = found.get(key)
        span = spans.received(spans.parse_body(existing.body)) if existing else None
        for _, part in key_parts:
            if span is None:
                # Completing must not change the caller's parts: a retry prepares them again.
                span = part if own_parts else spans.copy(part)
            else:
                span = spans.merge(span, part)
        assert span is not None
        try:
            spans.check_whole(span, merged=existing is not None or len(key_parts) > 1)
            spans.complete(span, prices)
            if existing:
                span.received_at.FromDatetime(existing.received_at)
            else:
                span.received_at.CopyFrom(received_now)
            cols = spans.stored_form(span)
        except spans.Invalid as exc:
            out.rejected.extend(
                Rejected(i, key[0], key[1], exc.field, exc.reason) for i, _ in key_parts
            )
            continue
        if existing is None:
            out.inserts.append((*cols.values, owner, now))
            out.insert_tags.append(cols.tags)
        else:
            values = dict(zip(spans.ROW_COLUMNS, cols.values, strict=True))
            out.updates.append({**values, "owner": owner, "row_id": existing.id})
            out.update_tags[existing.id] = cols.tags
    return out
