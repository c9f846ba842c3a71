"""S3-compatible object storage (AWS S3, SeaweedFS, MinIO, R2...) behind the BlobStore protocol.

A blob is the object `prefix + key` in one bucket. Credentials are never configuration: the
client takes them from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a
profile, a web identity), refreshing temporary ones itself.

Every failure leaves as a BlobError: BlobMissing for a missing object, StorageUnavailable for
what retrying later may cure (the network, a 5xx, throttling, credentials, a missing bucket).
Their messages are written here, from error codes and exception texts that carry no
credentials, and any URL query is cut off, so that no signature ever reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)

from services.common.blobstore.base import (
    BlobError,
    BlobInfo,
    BlobMissing,
    StorageUnavailable,
    check_key,
    is_key,
    new_key,
    settle,
)

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, ObjectTypeDef

log = logging.getLogger(__name__)
# At DEBUG, botocore logs each signature with the request it signed (a presigned URL, a download
# credential, can be rebuilt from those lines) and each request with its headers and body (a
# blob's bytes): these two loggers stay at INFO whatever the service's level.
for _noisy in ("botocore.auth", "botocore.endpoint"):
    logging.getLogger(_noisy).setLevel(logging.INFO)

MIB = 1024**2
MIN_PART_BYTES = 5 * MIB  # S3's floor for every part but the last
MAX_PART_BYTES = 5 * 1024 * MIB  # and its ceiling for any part
MAX_PARTS = 10_000
# Part sizes double every this many parts, so that 10,000 parts hold ~1000x the first size
# times 1023: 5 TiB (S3's largest object) from 5 MiB parts, and nobody has to guess a size.
_PARTS_PER_SIZE = 1000
# Presigned SigV4 URLs are refused beyond a week.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

# Error codes that say the storage, not the blob, is the problem: retrying later may succeed.
_UNAVAILABLE_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "NoSuchBucket",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "ServiceUnavailable",
        "SignatureDoesNotMatch",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TokenRefreshRequired",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_URL_QUERY = re.compile(r"\?[^\s\"']*")


@dataclass(frozen=True)
class S3Config:
    bucket: str
    #: Where this service's objects go, e.g. "datasets/"; normalised to no leading "/" and a
    #: trailing one, so that a prefix never runs into the key.
    prefix: str = ""
    #: Empty for AWS; the server's URL for S3-compatible ones.
    endpoint_url: str = ""
    #: Empty: the AWS chain's (AWS_REGION, the profile), else us-east-1.
    region: str = ""
    #: "path" for most non-AWS servers (and for endpoints named by IP address).
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: The first parts' size (the AWS CLI's); later ones grow (see _PARTS_PER_SIZE).
    part_bytes: int = 8 * MIB
    #: Parts of one upload sent at once. Measured, an upload holds about twice this many parts
    #: in memory (the part, and the client's copies while it is sent).
    max_concurrency: int = 4
    connect_timeout: float = 10.0
    #: Seconds without a byte from the server, per request: parts are big, so not too short.
    read_timeout: float = 60.0
    #: Tries per request, the first included (botocore's "standard" retries: jittered backoff).
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if len(self.bucket) < 3:
            raise ValueError("an S3 bucket name has at least 3 characters")
        if not MIN_PART_BYTES <= self.part_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part_bytes must be within [{MIN_PART_BYTES}, {MAX_PART_BYTES}]")
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        prefix = self.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        object.__setattr__(self, "prefix", prefix)  # frozen: the one place it is set


class S3BlobStore:
    backend = "s3"

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self._client: S3Client | None = None
        self._exit: AsyncExitStack | None = None
        self._opening = asyncio.Lock()

    # The BlobStore protocol ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client and check the bucket. A bucket that is missing or unreachable is
        logged, not raised: the service must come up, and every call works again once the
        storage does (each one raises StorageUnavailable meanwhile)."""
        s3 = await self._s3()
        try:
            with _translated("checking the bucket"):
                await s3.head_bucket(Bucket=self.config.bucket)
        except BlobError as exc:
            log.warning(
                "object storage is not usable yet; storage calls fail until it is",
                extra={"bucket": self.config.bucket, "error": str(exc)},
            )

    async def close(self) -> None:
        async with self._opening:
            if self._exit is not None:
                exit_stack, self._exit, self._client = self._exit, None, None
                await exit_stack.aclose()

    async def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self, await self._s3())

    async def stat(self, key: str) -> BlobInfo:
        name = self._name(key)
        s3 = await self._s3()
        with _translated(f"stat of blob {key}", key):
            head = await s3.head_object(Bucket=self.config.bucket, Key=name)
        return BlobInfo(key, head["ContentLength"], head["LastModified"].astimezone(UTC))

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        name = self._name(key)
        if offset < 0 or (length is not None and length < 0) or chunk_size < 1:
            raise ValueError("offset and length must not be negative, chunk_size positive")
        if length == 0:  # no Range can say "nothing": check that the blob reaches offset
            if offset > (await self.stat(key)).size:
                raise BlobError(f"blob {key} has fewer bytes than asked for")
            return
        s3 = await self._s3()
        try:
            with _translated(f"reading blob {key}", key):
                if offset == 0 and length is None:
                    got = await s3.get_object(Bucket=self.config.bucket, Key=name)
                else:
                    last = "" if length is None else str(offset + length - 1)
                    got = await s3.get_object(
                        Bucket=self.config.bucket, Key=name, Range=f"bytes={offset}-{last}"
                    )
        except _RangeNotSatisfiable:
            # "bytes=size-" is refused, though reading nothing from the very end is fine.
            if length is None and offset == (await self.stat(key)).size:
                return
            raise BlobError(f"blob {key} has fewer bytes than asked for") from None
        body = got["Body"]
        try:
            remaining = got["ContentLength"]
            if length is not None and remaining != length:
                raise BlobError(f"blob {key} has fewer bytes than asked for")
            while remaining > 0:
                with _translated(f"reading blob {key}", key):
                    data = await _read_up_to(body, min(chunk_size, remaining))
                    remaining -= len(data)
                    if not data:
                        raise BlobError(f"blob {key} ended early")
                    if remaining == 0:
                        # Read the end of the stream before handing over the last chunk: that
                        # is when botocore checks the length and (for a whole object) the CRC,
                        # so a consumer never gets a complete-looking stream of bad bytes.
                        await body.read(1)
                yield data
        finally:
            # Also when the consumer stops early or is cancelled: the connection is dropped
            # rather than drained.
            body.close()

    async def delete(self, key: str) -> None:
        name = self._name(key)
        s3 = await self._s3()
        with _translated(f"deleting blob {key}"):
            await s3.delete_object(Bucket=self.config.bucket, Key=name)  # 204 when absent too

    async def list_blobs(self) -> AsyncIterator[list[BlobInfo]]:
        # S3 lists names in ascending (UTF-8 binary) order; they share the prefix, so the keys
        # come in ascending order too.
        async for page in self._listed():
            if page:
                yield [
                    BlobInfo(key, found["Size"], found["LastModified"].astimezone(UTC))
                    for key, found in page
                ]

    async def sweep_incoming(self, older_than_seconds: float) -> int:
        """Abort the multipart uploads a crash left (their parts are stored and billed until
        then). Only names we make are touched: the bucket may be shared."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        s3 = await self._s3()
        aborted = 0
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.config.bucket, Prefix=self.config.prefix
        )
        with _translated("sweeping unfinished uploads"):
            async for page in pages:
                for upload in page.get("Uploads", []):
                    name = upload.get("Key", "")
                    if self._key_of(name) is None or upload["Initiated"] >= cutoff:
                        continue
                    try:
                        await s3.abort_multipart_upload(
                            Bucket=self.config.bucket, Key=name, UploadId=upload["UploadId"]
                        )
                        aborted += 1
                    except ClientError as exc:
                        if _code(exc) != "NoSuchUpload":  # finished or aborted meanwhile
                            raise
        return aborted

    async def presign_get(self, key: str, expires_seconds: int) -> str | None:
        """Signed locally (no request is made); with temporary credentials the URL also stops
        working when they expire."""
        name = self._name(key)
        if not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_seconds must be within [1, {MAX_PRESIGN_SECONDS}]")
        s3 = await self._s3()
        with _translated(f"presigning blob {key}"):
            return await s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.config.bucket, "Key": name},
                ExpiresIn=expires_seconds,
            )

    # Helpers -----------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.config.prefix + check_key(key)

    def _key_of(self, name: str) -> str | None:
        """The key an object name holds, or None for names we did not make."""
        key = name.removeprefix(self.config.prefix)
        return key if name.startswith(self.config.prefix) and is_key(key) else None

    async def _s3(self) -> S3Client:
        """The client, opened on first use (start() opens it too)."""
        async with self._opening:
            if self._client is None:
                self._client = await self._open()
            return self._client

    async def _open(self) -> S3Client:
        cfg = self.config
        session = AioSession()
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": cfg.addressing_style},
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            # Several writers with max_concurrency parts each, and reads that hold their
            # connection while the consumer takes the bytes: a short pool would queue them all.
            max_pool_connections=max(64, 8 * cfg.max_concurrency),
        )
        region = cfg.region or session.get_config_variable("region") or "us-east-1"
        exit_stack = AsyncExitStack()
        client: S3Client = await exit_stack.enter_async_context(
            session.create_client(
                "s3", region_name=region, endpoint_url=cfg.endpoint_url or None, config=config
            )
        )
        self._exit = exit_stack
        return client

    async def _listed(self) -> AsyncIterator[list[tuple[str, ObjectTypeDef]]]:
        """Our objects under the prefix, one list per ListObjectsV2 page (1000 names at most);
        others' names (a shared bucket) are left out."""
        s3 = await self._s3()
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.config.bucket, Prefix=self.config.prefix
        )
        with _translated("listing blobs"):
            async for page in pages:
                found = []
                for listed in page.get("Contents", []):
                    key = self._key_of(listed.get("Key", ""))
                    if key is not None:
                        found.append((key, listed))
                yield found


class S3BlobWriter:
    """Buffers a blob and sends it as one PutObject when small, else as a multipart upload
    whose parts go up concurrently while the caller writes on. Whatever goes wrong (a failed
    request, a cancellation, an abort) the upload is aborted, so no parts are left stored."""

    def __init__(self, store: S3BlobStore, s3: S3Client) -> None:
        self._s3 = s3
        self._bucket = store.config.bucket
        self._base_part_bytes = store.config.part_bytes
        self._max_in_flight = store.config.max_concurrency
        self._key = new_key()
        self._name = store.config.prefix + self._key
        # The part being filled, written into as the data comes. A BytesIO of its own (never
        # one made from a bytes object) is what botocore and aiohttp send without copying: a
        # bytes Body is wrapped in a BytesIO sharing it, which aiohttp's getbuffer() then
        # copies, doubling what each part in flight holds.
        self._part = io.BytesIO()
        self._size = 0
        self._upload_id: str | None = None
        self._next_part = 1
        self._in_flight: deque[asyncio.Task[CompletedPartTypeDef]] = deque()
        self._parts: list[CompletedPartTypeDef] = []
        self._open = True
        # Set once an object may exist under the name (a commit was sent): abort deletes it.
        self._object_sent = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        self._check_open("write")
        try:
            self._size += len(data)
            view = memoryview(data)
            while view:
                part_bytes = self._part_bytes()
                room = part_bytes - self._part.tell()
                self._part.write(view[:room])
                view = view[room:]
                if self._part.tell() == part_bytes:
                    await self._send(self._take_part())
        except BaseException:
            await self._discard()
            raise

    async def commit(self) -> str:
        self._check_open("commit")
        try:
            if self._upload_id is None:  # everything fit in one part's buffer
                self._object_sent = True
                with _translated(f"storing blob {self._key}"):
                    await self._s3.put_object(
                        Bucket=self._bucket, Key=self._name, Body=self._take_part()
                    )
            else:
                if self._part.tell():  # the last part, the only one allowed under 5 MiB
                    await self._send(self._take_part())
                while self._in_flight:
                    await self._collect_oldest()
                self._object_sent = True
                with _translated(f"completing blob {self._key}"):
                    await self._s3.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._name,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                self._upload_id = None
        except BaseException:
            await self._discard()
            raise
        self._open = False
        return self._key

    async def abort(self) -> None:
        await self._discard()

    # Helpers -----------------------------------------------------------------------------------

    def _check_open(self, doing: str) -> None:
        if not self._open:
            raise RuntimeError(f"{doing} after commit or abort")

    def _take_part(self) -> io.BytesIO:
        """The filled part, rewound to be sent; a new one is begun."""
        part, self._part = self._part, io.BytesIO()
        part.seek(0)
        return part

    def _part_bytes(self) -> int:
        """The size of the next part: doubled every _PARTS_PER_SIZE parts, so the part count
        stays under S3's 10,000 whatever the blob's size (up to 5 TiB)."""
        return min(
            self._base_part_bytes << ((self._next_part - 1) // _PARTS_PER_SIZE), MAX_PART_BYTES
        )

    async def _send(self, part: io.BytesIO) -> None:
        """Start uploading a part; first wait for the oldest one in flight if the limit is
        reached, which is what holds a fast writer back (and bounds the memory)."""
        if self._next_part > MAX_PARTS:
            raise BlobError("blob too large for one multipart upload")
        if self._upload_id is None:
            with _translated(f"starting blob {self._key}"):
                started = await self._s3.create_multipart_upload(
                    Bucket=self._bucket, Key=self._name, ChecksumAlgorithm="CRC32"
                )
            self._upload_id = started["UploadId"]
        while len(self._in_flight) >= self._max_in_flight:
            await self._collect_oldest()
        number, self._next_part = self._next_part, self._next_part + 1
        self._in_flight.append(
            asyncio.create_task(self._upload_part(self._upload_id, number, part))
        )

    async def _upload_part(
        self, upload_id: str, number: int, data: io.BytesIO
    ) -> CompletedPartTypeDef:
        # CRC32 per part, declared when the upload was created: S3 then checks each part, and
        # CompleteMultipartUpload must repeat every part's checksum (it is refused without).
        with _translated(f"uploading part {number} of blob {self._key}"):
            sent = await self._s3.upload_part(
                Bucket=self._bucket,
                Key=self._name,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="CRC32",
            )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": sent["ETag"]}
        if "ChecksumCRC32" in sent:
            part["ChecksumCRC32"] = sent["ChecksumCRC32"]
        return part

    async def _collect_oldest(self) -> None:
        part = await self._in_flight[0]  # a failed part raises here, and the upload is aborted
        self._in_flight.popleft()
        self._parts.append(part)

    async def _discard(self) -> None:
        """Undo everything, waited for even if the caller is cancelled again meanwhile (anyio
        cancels at every await until its scope exits): the requests are bounded by the
        client's timeouts. Errors are logged, not raised: this runs on cleanup paths, and what
        it could not remove is found later by sweep_incoming or reconciliation."""
        self._open = False
        work = asyncio.ensure_future(self._undo())
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await settle(work)
            raise

    async def _undo(self) -> None:
        # Parts still uploading are stopped and waited for first: one finishing after the abort
        # would be stored again.
        tasks = list(self._in_flight)
        self._in_flight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._part = io.BytesIO()
        try:
            if self._upload_id is not None:
                await self._abort_upload(self._upload_id)
                self._upload_id = None
            if self._object_sent:
                with _translated(f"deleting blob {self._key}"):
                    await self._s3.delete_object(Bucket=self._bucket, Key=self._name)
                self._object_sent = False
        except BlobError as exc:
            log.warning(
                "could not remove an aborted upload; housekeeping will",
                extra={"blob": self._key, "error": str(exc)},
            )

    async def _abort_upload(self, upload_id: str) -> None:
        try:
            with _translated(f"aborting the upload of blob {self._key}"):
                await self._s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._name, UploadId=upload_id
                )
        except _NoSuchUpload:
            pass  # already gone: what an abort wants


# Errors ----------------------------------------------------------------------------------------


class _RangeNotSatisfiable(BlobError):
    """A 416: the blob ends before the range starts (read turns it into a plain BlobError)."""


class _NoSuchUpload(BlobError):
    """The multipart upload is finished or aborted already."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _safe(text: str) -> str:
    """An exception's text without URL queries (a presigned URL's signature lives there)."""
    return _URL_QUERY.sub("", text)


@contextlib.contextmanager
def _translated(doing: str, key: str = "") -> Iterator[None]:
    """Re-raise the client's errors as BlobErrors with messages an operator can act on."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        what = f"S3 {doing} failed: {code or 'error'} (HTTP {status})"
        if key and code in _MISSING_CODES:
            raise BlobMissing(f"blob {key} is missing") from exc
        if code == "InvalidRange" or status == 416:
            raise _RangeNotSatisfiable(what) from exc
        if code == "NoSuchUpload":
            raise _NoSuchUpload(what) from exc
        if code == "NoSuchBucket" or (not key and code in _MISSING_CODES):
            raise StorageUnavailable(f"{what}: the bucket does not exist") from exc
        if status in (401, 403):
            raise StorageUnavailable(
                f"{what}: check the credentials (the AWS chain) and the bucket's policy"
            ) from exc
        if status >= 500 or status == 429 or code in _UNAVAILABLE_CODES:
            raise StorageUnavailable(what) from exc
        raise BlobError(what) from exc
    except ParamValidationError:
        raise  # our bug, not the storage's
    except NoCredentialsError as exc:
        raise StorageUnavailable(
            f"S3 {doing} failed: no credentials in the AWS chain (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, a web identity)"
        ) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        # Connection refused or reset, timeouts, a stream cut short, a checksum mismatch, no
        # credentials anywhere in the chain.
        detail = _safe(str(exc)) or type(exc).__name__
        raise StorageUnavailable(f"S3 {doing} failed: {detail}") from exc


async def _read_up_to(body: StreamingBody, size: int) -> bytes:
    """`size` bytes from the stream, fewer only at its end (one read returns what has
    arrived, often much less than a chunk)."""
    data = await body.read(size)
    if len(data) == size or not data:
        return data
    buffer = bytearray(data)
    while len(buffer) < size and (more := await body.read(size - len(buffer))):
        buffer += more
    return bytes(buffer)
