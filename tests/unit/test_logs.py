"""Credentials never reach a log line, whatever logs them and however."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from services.common import context, logs
from services.common import redact as redact_module
from services.common.redact import redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
DOWNLOAD = "tldl_" + "A1b2C3d4" * 5 + "xyz"
KEYS = [
    "sk-proj-" + "a" * 40,
    "sk-ant-api03-" + "b" * 40,
    "hf_" + "c" * 34,
    "rpa_" + "D" * 40,
]


@pytest.mark.parametrize("secret", [JWT, DOWNLOAD, *KEYS])
def test_redact_masks_each_known_shape(secret: str) -> None:
    masked = redact(f"GET /v1/x?token={secret} done")
    assert secret not in masked
    assert "[REDACTED]" in masked


def test_redact_masks_authorization_values() -> None:
    assert "c2VjcmV0" not in redact("Authorization: Basic c2VjcmV0c2VjcmV0")
    assert "opaque-token-value" not in redact("authorization=Bearer opaque-token-value")


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "dataset ds_abc stored: 1000 rows, sha256 ff00, user alice"
    assert redact(text) == text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("INFO", "json")
    root.handlers[0].stream = stream  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_json_lines_carry_request_id_and_extras_and_mask_secrets(captured: io.StringIO) -> None:
    context.request_id.set("req-1")
    context.caller.set("alice")
    log = logging.getLogger("test")
    log.info("minted %s", DOWNLOAD, extra={"url": f"http://x/v1/dataset-downloads/{DOWNLOAD}"})
    try:
        raise RuntimeError(f"boom with {JWT}")
    except RuntimeError:
        log.exception("failed")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert lines[0]["request_id"] == "req-1"
    assert lines[0]["user"] == "alice"
    assert "url" in lines[0]
    assert DOWNLOAD not in captured.getvalue()
    assert JWT not in captured.getvalue()
    assert "RuntimeError" in lines[1]["exc"]


def test_text_lines_show_fields_and_mask_secrets(captured: io.StringIO) -> None:
    logging.getLogger().handlers[0].setFormatter(logs.TextFormatter())
    context.request_id.set("req-2")
    logging.getLogger("test").warning("done", extra={"token": DOWNLOAD, "rows": 3})
    line = captured.getvalue()
    assert "done request_id=req-2" in line
    assert "rows=3" in line
    assert DOWNLOAD not in line


def test_configured_secrets_are_masked_whatever_their_shape(captured: io.StringIO) -> None:
    secret = "plain-looking-internal-secret-1234"
    logging.getLogger("test").error("connecting with %s", secret)
    assert secret in captured.getvalue()  # no shape to recognise it by ...
    redact_module.register(secret)
    logging.getLogger("test").error("connecting with %s", secret)
    assert captured.getvalue().splitlines()[-1].count(secret) == 0  # ... until registered
