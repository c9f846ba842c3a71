"""What every blob store offers: the services that own bytes speak only to this.

A blob is immutable once committed and named by a random key the store chooses, never by a
caller. Two backends implement it: a local directory (local.py) and S3-compatible object storage
(s3.py). Every method is a coroutine; a backend that blocks runs its work in threads and waits
for them even when cancelled (see `settle`), so a cancelled call never leaves a thread using what
the caller is about to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

_KEY = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")


class BlobError(Exception):
    """A blob is missing or is not what we stored; the message is for operators, not callers."""


class BlobMissing(BlobError):
    """No blob has that key."""


class StorageUnavailable(BlobError):
    """The storage could not be reached or refused to work (a network failure, a 5xx, bad
    credentials): retrying later may succeed, unlike for a missing blob."""


def new_key() -> str:
    return secrets.token_hex(16)


def is_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def check_key(key: str) -> str:
    if not is_key(key):
        raise BlobError(f"not a blob key: {key!r}")
    return key


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: datetime


class BlobWriter(Protocol):
    """One new blob being written. Never call two of its methods at once. `abort` undoes
    whatever was done, committed or not, and may be repeated."""

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> str:
        """Make the blob durable and visible; returns its key."""
        ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    #: "local" or "s3": for logs, metrics and the README's "which is used when".
    backend: str

    async def start(self) -> None:
        """Prepare (create the layout, open the client); idempotent."""
        ...

    async def close(self) -> None: ...

    async def writer(self) -> BlobWriter: ...

    async def stat(self, key: str) -> BlobInfo:
        """The blob's size and when it was written; BlobMissing if there is none."""
        ...

    def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        """The bytes [offset, offset+length) in chunks (to the end when length is None);
        BlobError if the blob is missing or shorter than asked for."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a blob; removing one that is not there is not an error."""
        ...

    def list_blobs(self) -> AsyncIterator[list[BlobInfo]]:
        """Every finished blob, in batches, in ascending key order, streamed (a bucket may
        hold millions): reconcile.py walks it beside the database's keys in the same order."""
        ...

    async def sweep_incoming(self, older_than_seconds: float) -> int:
        """Remove what crashed uploads left (partial files, unfinished multipart uploads)
        older than this; returns how many."""
        ...

    async def presign_get(self, key: str, expires_seconds: int) -> str | None:
        """A URL anyone holding it may GET the blob from (Range honoured) until it expires;
        None where the backend has no such thing."""
        ...


async def settle(work: asyncio.Future[Any]) -> None:
    """Wait until thread work is over, cancellations or not: a thread cannot be stopped, and it
    may still use descriptors that the caller is about to close. (anyio, under Starlette,
    cancels again at every await until the cancelled scope exits: hence the loop.)"""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([work])


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread; if the caller is cancelled meanwhile, wait for the thread
    to finish before the cancellation propagates."""
    work: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await settle(work)
        raise
