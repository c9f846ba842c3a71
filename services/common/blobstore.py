"""Local blob storage: files named by random keys the service chooses, never by a caller.

The datasets service writes here; the gateway reads here to serve downloads the datasets
service has authorised (bytes never cross gRPC: see gateway/downloads.py for why).
Every path component is opened relative to a directory descriptor with O_NOFOLLOW, so a symlink
planted anywhere under the root (in place of a blob or of a fan-out directory) makes the open
fail instead of escaping; a blob must be a regular file with exactly one link.

Layout under the root:  objects/<k[:2]>/<key>   finished blobs
                        incoming/<random>       uploads in progress (removed on abort)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{32}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BlobError(Exception):
    """A blob is missing or is not what we stored; the message is for operators, not callers."""


def new_key() -> str:
    return secrets.token_hex(16)


def _check_key(key: str) -> str:
    if not _KEY.match(key):
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
                fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
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


class BlobWriter:
    """Writes a new blob to incoming/, then moves it under objects/ on commit.

    Blocking: call it from a worker thread (the datasets service does).
    """

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._name = secrets.token_hex(16)
        self._dir = store._open_dir("incoming")
        self._fd = os.open(
            self._name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._dir,
        )
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self) -> str:
        """Make the blob durable and visible; returns its key."""
        key = new_key()
        os.fsync(self._fd)
        os.close(self._fd)
        target = self._store._open_dir("objects", key[:2], create=True)
        try:
            os.rename(self._name, key, src_dir_fd=self._dir, dst_dir_fd=target)
            os.fsync(target)
        finally:
            os.close(target)
            os.close(self._dir)
        return key

    def abort(self) -> None:
        os.close(self._fd)
        try:
            os.unlink(self._name, dir_fd=self._dir)
        finally:
            os.close(self._dir)


async def read_range(
    blob: OpenBlob, offset: int, length: int, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """The bytes [offset, offset+length) in chunks, read off the event loop."""
    loop = asyncio.get_running_loop()
    end = offset + length
    while offset < end:
        data = await loop.run_in_executor(
            None, os.pread, blob.fd, min(chunk_size, end - offset), offset
        )
        if not data:
            raise BlobError("blob shrank while it was being read")
        offset += len(data)
        yield data
