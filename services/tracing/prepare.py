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

from services.tracing import spans
from services.tracing.prices import PriceTable
from services.tracing.sanitize import sanitize_text
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


@dataclass
class Prepared:
    """Rows to write: new spans, and stored spans that parts changed (`row_id` their id)."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
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
) -> Prepared:
    """Rows for checked parts (index in the batch, span), given what is stored of their spans.

    Parts of one span must all be in one call: they are merged in order, onto the stored
    version if there is one. Each part is checked on its own first, then the merged span.
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
    for key, key_parts in by_key.items():
        existing = found.get(key)
        span = spans.received(spans.parse_body(existing.body)) if existing else None
        for _, part in key_parts:
            # A copy: completing must not change the parts, which a retry prepares again.
            span = spans.copy(part) if span is None else spans.merge(span, part)
        assert span is not None
        try:
            spans.check_whole(span)
            spans.complete(span, prices)
            span.received_at.FromDatetime(existing.received_at if existing else now)
            cols = spans.stored_form(span)
        except spans.Invalid as exc:
            out.rejected.extend(
                Rejected(i, key[0], key[1], exc.field, exc.reason) for i, _ in key_parts
            )
            continue
        values = {**cols.values, "owner": owner, "updated_at": now}
        if existing is None:
            out.inserts.append({**values, "received_at": now})
            out.insert_tags.append(cols.tags)
        else:
            out.updates.append({**values, "row_id": existing.id})
            out.update_tags[existing.id] = cols.tags
    return out
