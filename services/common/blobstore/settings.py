"""Which blob store a service uses, from its own environment variables.

A service that owns bytes mixes StorageSettings into its settings, so each reads its own
TUNELAB_<SERVICE>_STORAGE, TUNELAB_<SERVICE>_S3_BUCKET and so on: datasets and outputs may live
in different buckets (or prefixes) with different retention. Credentials are never settings:
they come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, a
web identity on Kubernetes), as every AWS SDK reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from services.common.blobstore.base import BlobStore
from services.common.blobstore.local import LocalBlobStore

MIB = 1024**2


class StorageSettings(BaseSettings):
    storage: Literal["local", "s3"] = Field(
        "local", description="local: a directory (the embedded default); s3: object storage."
    )
    s3_bucket: str = Field("", description="The bucket (it must exist).")
    s3_prefix: str = Field(
        "", description="Where under the bucket this service's objects go, e.g. datasets/."
    )
    s3_endpoint_url: str = Field(
        "", description="For S3-compatible servers (SeaweedFS, MinIO, R2); empty for AWS."
    )
    s3_region: str = Field("", description="Empty: the AWS chain's (AWS_REGION), else us-east-1.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path for most non-AWS servers."
    )
    s3_part_bytes: int = Field(
        8 * MIB,
        ge=5 * MIB,
        le=5 * 1024 * MIB,
        description="Multipart upload part size; an upload holds part size times "
        "(concurrency + 1) in memory.",
    )
    s3_max_concurrency: int = Field(4, ge=1, le=64, description="Parts of one upload sent at once.")

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> Self:
        if self.storage == "s3" and len(self.s3_bucket) < 3:
            raise ValueError("storage is s3: set the bucket (S3_BUCKET, at least 3 characters)")
        return self

    def blob_store(self, local_dir: Path) -> BlobStore:
        """The configured store; `local_dir` is used for local storage."""
        if self.storage == "local":
            return LocalBlobStore(local_dir)
        # Imported here: aiobotocore takes a while to import, and local storage never needs it.
        from services.common.blobstore.s3 import S3BlobStore, S3Config

        return S3BlobStore(
            S3Config(
                bucket=self.s3_bucket,
                prefix=self.s3_prefix,
                endpoint_url=self.s3_endpoint_url,
                region=self.s3_region,
                addressing_style=self.s3_addressing_style,
                part_bytes=self.s3_part_bytes,
                max_concurrency=self.s3_max_concurrency,
            )
        )
