"""Blob storage: one interface (base.BlobStore), a local-directory and an S3 backend."""

from services.common.blobstore.base import (
    BlobError,
    BlobInfo,
    BlobMissing,
    BlobStore,
    BlobWriter,
    StorageUnavailable,
    new_key,
    settle,
)

__all__ = [
    "BlobError",
    "BlobInfo",
    "BlobMissing",
    "BlobStore",
    "BlobWriter",
    "StorageUnavailable",
    "new_key",
    "settle",
]
