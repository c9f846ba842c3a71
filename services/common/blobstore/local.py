"""Local blob storage: a directory, the embedded default.

Every path component is opened relative to a directory descriptor with O_NOFOLLOW, so a symlink
planted anywhere under the root (in place of a blob or of a fan-out directory) makes the open
fail instead of escaping; a blob must be a regular file with exactly one link.

Layout under the root:  objects/<k[:2]>/<key>   finished blobs
                        incoming/<random>       uploads in progress (removed on abort)
A crash can leave a file in either that nobody will use: housekeeping sweeps both, by age.

The file work is blocking: the async methods run it in threads (base.in_thread). Only the
owning service's process touches the directory; others ask it for the bytes (blobserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common.blobstore.base import (
    BlobError,
    BlobInfo,
    BlobMissing,
    check_key,
    in_thread,
    is_key,
    new_key,
    settle,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class OpenBlob:
    fd: int
    size: int
    modified: float

    def close(self) -> None:
        os.close(self.fd)


class LocalBlobStore:
    backend = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))
        self._laid_out = False

    # The BlobStore protocol ------------------------------------------------------------------

    async def start(self) -> None:
        await in_thread(self.ensure_layout)

    async def close(self) -> None:
        pass

    async def writer(self) -> LocalBlobWriter:
        opening = asyncio.ensure_future(asyncio.to_thread(self._new_writer))
        try:
            return LocalBlobWriter(await asyncio.shield(opening))
        except asyncio.CancelledError:
            # Cancelled while the thread opened the file: it is nobody's but ours to remove.
            await settle(opening)
            if not opening.cancelled() and opening.exception() is None:
                opening.result().abort()
            raise

    async def stat(self, key: str) -> BlobInfo:
        blob = await in_thread(self.open, key)
        blob.close()
        return BlobInfo(key, blob.size, datetime.fromtimestamp(blob.modified, UTC))

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        blob = await in_thread(self.open, key)
        try:
            end = blob.size if length is None else offset + length
            if end > blob.size:
                raise BlobError(f"blob {key} has {blob.size} bytes, fewer than asked for")
            async for data in read_range(blob, offset, end - offset, chunk_size):
                yield data
        finally:
            blob.close()

    async def delete(self, key: str) -> None:
        await in_thread(self.delete_now, key)

    async def list_blobs(self) -> AsyncIterator[list[BlobInfo]]:
        objects = await in_thread(self._open_dir, "objects")
        try:
            fan_outs = sorted(os.listdir(objects))
        finally:
            os.close(objects)
        for fan_out in fan_outs:
            with contextlib.suppress(OSError):  # removed meanwhile, or not a directory
                found = await in_thread(self._listed, fan_out)
                if found:
                    yield found

    async def sweep_incoming(self, older_than_seconds: float) -> int:
        return await in_thread(self._sweep_incoming, older_than_seconds)

    async def presign_get(self, key: str, expires_seconds: int) -> str | None:
        return None  # the owning service serves the bytes itself (blobserver.py)

    # Blocking helpers --------------------------------------------------------------------------

    def _new_writer(self) -> FileWriter:
        if not self._laid_out:  # a store used before start() (tests assemble parts by hand)
            self.ensure_layout()
        return FileWriter(self)

    def ensure_layout(self) -> None:
        """Create the directories (owner-only) if missing."""
        for sub in ("objects", "incoming"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._laid_out = True

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
        """Open a blob for reading; BlobMissing if it is not there, BlobError if it is a
        symlink or not ours."""
        check_key(key)
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
        except FileNotFoundError as exc:
            raise BlobMissing(f"blob {key} is missing") from exc
        except OSError as exc:
            kind = "is a symlink" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else "is unusable"
            raise BlobError(f"blob {key} {kind} ({exc.strerror})") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise BlobError(f"blob {key} is not a regular file with one link")
        return OpenBlob(fd, info.st_size, info.st_mtime)

    def delete_now(self, key: str) -> None:
        check_key(key)
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

    def _sweep_incoming(self, older_than_seconds: float) -> int:
        # Age, not presence, decides: another upload may be writing a younger one right now.
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

    def _listed(self, fan_out: str) -> list[BlobInfo]:
        """The blobs in one fan-out directory, by key."""
        dir_fd = self._open_dir("objects", fan_out)
        found = []
        try:
            for name in sorted(os.listdir(dir_fd)):
                if is_key(name) and name[:2] == fan_out:
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        if stat.S_ISREG(info.st_mode):
                            modified = datetime.fromtimestamp(info.st_mtime, UTC)
                            found.append(BlobInfo(name, info.st_size, modified))
        finally:
            os.close(dir_fd)
        return found


class FileWriter:
    """Writes a new blob to incoming/, then moves it under objects/ on commit. Blocking."""

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._name = secrets.token_hex(16)
        self._dir: int | None = store._open_dir("incoming")
        try:
            self._fd: int | None = os.open(
                self._name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._dir,
            )
        except BaseException:
            self._close_dir()
            raise
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
                self._store.delete_now(self.key)
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


class LocalBlobWriter:
    """The BlobWriter protocol over a FileWriter: each step in a thread, waited for even when
    the caller is cancelled, so `abort` never closes a descriptor a thread still writes to."""

    def __init__(self, files: FileWriter) -> None:
        self._files = files

    @property
    def size(self) -> int:
        return self._files.size

    async def write(self, data: bytes) -> None:
        await in_thread(self._files.write, data)

    async def commit(self) -> str:
        return await in_thread(self._files.commit)

    async def abort(self) -> None:
        await in_thread(self._files.abort)


async def read_range(
    blob: OpenBlob, offset: int, length: int, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """The bytes [offset, offset+length) of an open blob in chunks, read in threads; a read in
    flight when the reader is cancelled is waited for (its thread still uses the descriptor)."""
    end = offset + length
    while offset < end:
        data = await in_thread(os.pread, blob.fd, min(chunk_size, end - offset), offset)
        if not data:
            raise BlobError("blob shrank while it was being read")
        offset += len(data)
        yield data
