"""Fixtures for tests of S3 storage, on a real SeaweedFS (tunelab_cli/seaweed.py): one server for
the session, a fresh prefix of its bucket for each test, and the credentials in the environment,
where the AWS chain finds them (S3Config has no credentials).

Every test session loads this plugin, most never use S3: the heavy imports (aiobotocore,
botocore: ~0.6 s) happen in the fixtures, when a test asks for one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from services.common.blobstore.s3 import S3Config
    from tunelab_cli.seaweed import SeaweedFS

S3_TEST_BUCKET = "tunelab-test"


def use_credentials(monkeypatch: pytest.MonkeyPatch, server: SeaweedFS) -> None:
    """The server's credentials, and nothing of the developer's AWS setup (a profile, a
    region, ~/.aws settings such as checksum modes) nor the EC2 metadata service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def s3_call(server: SeaweedFS, operation: str, **params: Any) -> Any:
    """One call of botocore's S3 client on the server's test bucket, with a client of its own:
    what a test looks at beside the store under test."""
    client = server.client()
    try:
        return getattr(client, operation)(Bucket=S3_TEST_BUCKET, **params)
    finally:
        client.close()


def multipart_uploads(server: SeaweedFS, prefix: str) -> list[str]:
    """The keys of the multipart uploads under `prefix` neither completed nor aborted."""
    listed = s3_call(server, "list_multipart_uploads", Prefix=prefix)
    return sorted(upload["Key"] for upload in listed.get("Uploads", []))


def config_for(server: SeaweedFS) -> S3Config:
    """An S3Config for the server's test bucket, under a prefix of its own (change the rest
    with dataclasses.replace)."""
    from services.common.blobstore.s3 import S3Config

    return S3Config(
        bucket=S3_TEST_BUCKET,
        prefix=f"t/{uuid.uuid4().hex}/",
        endpoint_url=server.endpoint_url,
        addressing_style="path",  # weed serves no virtual hosts on 127.0.0.1
    )


def _started(data_dir: Path) -> SeaweedFS:
    from tunelab_cli.seaweed import SeaweedFS

    server = SeaweedFS(data_dir)
    server.start()
    try:
        server.create_bucket(S3_TEST_BUCKET)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """SeaweedFS for the whole session, with the bucket "tunelab-test"."""
    server = _started(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def private_s3_server(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of the test's own, with the bucket "tunelab-test", for tests that stop or
    restart it."""
    server = _started(tmp_path / "seaweedfs")
    yield server
    server.stop()


@pytest.fixture
def s3_config(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Config:
    """The session server's bucket under a prefix unique to the test (t/<uuid>/)."""
    use_credentials(monkeypatch, s3_server)
    return config_for(s3_server)
