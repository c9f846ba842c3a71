"""Local blob storage: files named by random keys the service chooses, never by a caller.

The datasets service writes here; the gateway reads here to serve downloads the datasets
service has authorised (bytes never cross gRPC: see gateway/downloads.py for why).
Every path component is opened relative to a directory descriptor with O_NOFOLLOW, so a symlink
planted anywhere under the root (in place of a blob or of a fan-out directory) makes the open
fail instead of escaping; a blob must be a regular file with exactly one link.

Layout under the root:  objects/<k[:2]>/<key>   finished blobs
                        incoming/<random>       uploads in progress (removed on abort)
A crash can leave a file in either that nobody will use: housekeeping sweeps both, by age.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEY = re.compile(r"[0-9a-f]{32}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BlobError(Exception):
    """A blob is missing or is not what we stored; the message is for operators, not callers."""


def new_key() -> str:
    return secrets.token_hex(16)


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise BlobError(f"not a blob key: {key!r}")
    return key


@dataclass(frozen=True)
class OpenBlob:
    fd: int
    size: int

    def close(self) -> None:
        os.close(self.fd)


class LocalBlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))

    def ensure_layout(self) -> None:
        """Create the directories (owner-only) if missing; done once by the writing service."""
        for sub in ("objects", "incoming"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def _open_dir(self, *parts: str, create: bool = False) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open(self, key: str) -> OpenBlob:
        """Open a blob for reading; BlobError if it is missing, a symlink or not ours."""
        _check_key(key)
        try:
            dir_fd = self._open_dir("objects", key[:2])
            try:
                # O_NONBLOCK: a FIFO planted here must fail the checks below, not hang the open.
                fd = os.open(
                    key,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
            finally:
                os.close(dir_fd)
        except OSError as exc:
            kind = "is a symlink" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else "is missing"
            raise BlobError(f"blob {key} {kind} ({exc.strerror})") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise BlobError(f"blob {key} is not a regular file with one link")
        return OpenBlob(fd, info.st_size)

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def sweep_incoming(self, older_than_seconds: float) -> int:
        """Remove partial uploads a crash left behind; returns how many. Age, not presence,
        decides: another replica may be writing a younger one right now."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        dir_fd = self._open_dir("incoming")
        try:
            for name in os.listdir(dir_fd):
                with contextlib.suppress(OSError):  # one odd entry must not stop the sweep
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if info.st_mtime < cutoff:
                        os.unlink(name, dir_fd=dir_fd)
                        removed += 1
        finally:
            os.close(dir_fd)
        return removed

    def keys_older_than(self, seconds: float) -> list[str]:
        """The keys of finished blobs last written more than `seconds` ago. For a sweep of
        blobs no record names (a crash between a blob's commit and its record, or between a
        record's deletion and its blob's); age guards the uploads being recorded right now."""
        cutoff = time.time() - seconds
        objects = self._open_dir("objects")
        try:
            fan_outs = os.listdir(objects)
        finally:
            os.close(objects)
        keys: list[str] = []
        for fan_out in fan_outs:
            with contextlib.suppress(OSError):  # removed meanwhile, or not a directory
                keys += _written_before(self._open_dir("objects", fan_out), fan_out, cutoff)
        return keys

    def delete(self, key: str) -> None:
        _check_key(key)
        try:
            dir_fd = self._open_dir("objects", key[:2])
        except FileNotFoundError:
            return
        try:
            os.unlink(key, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)


def _written_before(dir_fd: int, fan_out: str, cutoff: float) -> list[str]:
    """The keys in one fan-out directory last written before `cutoff`; closes `dir_fd`."""
    found = []
    try:
        for name in os.listdir(dir_fd):
            if _KEY.fullmatch(name) and name[:2] == fan_out:
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if info.st_mtime < cutoff:
                        found.append(name)
    finally:
        os.close(dir_fd)
    return found


class BlobWriter:
    """Writes a new blob to incoming/, then moves it under objects/ on commit.

    Blocking: call it from a worker thread (the datasets service does), and never call two of
    its methods at once. `abort` undoes whatever was done, committed or not, and may be repeated.
    """

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._name = secrets.token_hex(16)
        self._dir: int | None = store._open_dir("incoming")
        self._fd: int | None = os.open(
            self._name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._dir,
        )
        self.size = 0
        self.key: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise RuntimeError("write after commit or abort")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self) -> str:
        """Make the blob durable and visible; returns its key."""
        if self._fd is None or self._dir is None:
            raise RuntimeError("commit after commit or abort")
        key = new_key()
        os.fsync(self._fd)
        self._close_file()
        target = self._store._open_dir("objects", key[:2], create=True)
        try:
            os.rename(self._name, key, src_dir_fd=self._dir, dst_dir_fd=target)
            self.key = key
            os.fsync(target)
        finally:
            os.close(target)
            self._close_dir()
        return key

    def abort(self) -> None:
        try:
            if self.key is not None:
                self._store.delete(self.key)
                self.key = None
            self._close_file()
            if self._dir is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._name, dir_fd=self._dir)
        finally:
            self._close_file()
            self._close_dir()

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _close_dir(self) -> None:
        if self._dir is not None:
            fd, self._dir = self._dir, None
            os.close(fd)


async def settle(work: asyncio.Future[Any]) -> None:
    """Wait until thread work is over, cancellations or not: a thread cannot be stopped, and it
    may still use descriptors that the caller is about to close. (anyio, under Starlette,
    cancels again at every await until the cancelled scope exits: hence the loop.)"""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([work])


async def read_range(
    blob: OpenBlob, offset: int, length: int, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """The bytes [offset, offset+length) in chunks, read off the event loop.

    If the reader is cancelled (the client hung up), the read in flight is waited for: its
    thread still uses the descriptor, which the caller is about to close."""
    loop = asyncio.get_running_loop()
    end = offset + length
    while offset < end:
        read = loop.run_in_executor(None, os.pread, blob.fd, min(chunk_size, end - offset), offset)
        try:
            data = await asyncio.shield(read)
        except asyncio.CancelledError:
            await settle(read)
            raise
        if not data:
            raise BlobError("blob shrank while it was being read")
        offset += len(data)
        yield data
