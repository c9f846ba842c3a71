"""Ingest's CPU work (`prepare`) spread over worker processes.

Checking, merging, completing and sanitizing a span costs a few hundred microseconds of pure
Python; on the event loop that caps ingest at one core and stalls every other call meanwhile.
Here a batch is cut into one chunk per worker (all parts of a span in one chunk) and prepared
in parallel, while the loop goes on receiving other batches and writing prepared ones.

Workers are started with `spawn` (forking a process that runs gRPC threads is unsafe) when the
service starts, and started afresh if one dies. They exit as soon as the service does, even by
SIGKILL; multiprocessing's resource tracker then sees the last end of its pipe close and exits
too. Small batches are prepared in the service's own process, where a round trip to a worker
would cost more than the work.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime

import grpc

from services.common import children, redact
from services.common.errors import ServiceError
from services.tracing.prepare import Existing, Key, Prepared, prepare
from services.tracing.prices import PriceTable
from tunelab.common.v1 import errors_pb2
from tunelab.tracing.v1 import spans_pb2 as pb

log = logging.getLogger(__name__)

# Batches smaller than this are prepared in the service's own process.
SMALL_BATCH = 64


class Preparer:
    """`prepare` for whole batches: in `workers` processes, or in this one when it is 0."""

    def __init__(self, prices: PriceTable, workers: int) -> None:
        self.prices = prices
        self.workers = workers
        self._pool = self._start() if workers else None

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            # The secrets this process masks in everything it writes, the workers mask too.
            initargs=(self.prices, redact.registered(), os.getpid()),
        )
        # Started now, not on the first batch: a worker takes a second or two to start (a
        # fresh interpreter importing the protos), which the first producer would wait for.
        for _ in range(self.workers):
            pool.submit(_started)
        return pool

    async def __call__(
        self,
        owner: str,
        batch: Sequence[pb.Span],
        offset: int,
        found: dict[Key, Existing],
        now: datetime,
    ) -> Prepared:
        pool = self._pool
        if pool is None or len(batch) < SMALL_BATCH:
            return prepare(owner, list(enumerate(batch, offset)), found, now, self.prices)
        loop = asyncio.get_running_loop()
        chunks = _chunks(batch, offset, self.workers)
        try:
            done = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        pool,
                        _prepare_in_worker,
                        owner,
                        chunk,
                        {key: found[key] for key in chunk_keys if key in found},
                        now,
                    )
                    for chunk, chunk_keys in chunks
                )
            )
        except BrokenProcessPool:
            # A worker died (killed, out of memory): start afresh, once however many batches
            # were in flight; the producers retry.
            if self._pool is pool:
                log.error("an ingest worker died; restarting the workers")
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "the batch could not be processed (a worker stopped); retry it",
                errors_pb2.ERROR_REASON_INTERNAL,
            ) from None
        prepared = Prepared()
        for part in done:
            prepared.extend(part)
        return prepared

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _chunks(
    batch: Sequence[pb.Span], offset: int, count: int
) -> list[tuple[list[tuple[int, bytes]], set[Key]]]:
    """The batch in `count` chunks of serialized parts, spans dealt out in turn, every part of
    a span in the same chunk; with the keys each chunk holds."""
    chunks: list[tuple[list[tuple[int, bytes]], set[Key]]] = [([], set()) for _ in range(count)]
    dealt: dict[Key, int] = {}
    for index, span in enumerate(batch, offset):
        key = (span.trace_id, span.span_id)
        which = dealt.setdefault(key, len(dealt) % count)
        chunks[which][0].append((index, span.SerializeToString()))
        chunks[which][1].add(key)
    return [chunk for chunk in chunks if chunk[0]]


_prices: PriceTable | None = None


def _start_worker(prices: PriceTable, secrets: frozenset[str], service: int) -> None:
    global _prices
    children.die_with_parent(service)
    _prices = prices
    for secret in secrets:
        redact.register(secret)
    # Ctrl-C reaches the whole process group: the service, not its workers, decides to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _started() -> None:
    """Nothing: submitted once per worker so that the pool starts them all."""


def _prepare_in_worker(
    owner: str, parts: list[tuple[int, bytes]], found: dict[Key, Existing], now: datetime
) -> Prepared:
    assert _prices is not None, "the worker was started without its price table"
    spans = [(index, pb.Span.FromString(data)) for index, data in parts]
    return prepare(owner, spans, found, now, _prices, own_parts=True)
