"""What a pod's log line may show: pod_logs.sanitize."""

from __future__ import annotations

from services.deploy.pod_logs import MASK, MAX_LINE_CHARS, sanitize


def test_the_runs_own_secrets_are_masked_whatever_their_shape() -> None:
    key = "plain-looking-key-1234"  # no recognisable shape: only its value tells
    assert sanitize([f"key={key}", "key=plain-looking"], [key]) == [
        f"key={MASK}",
        "key=plain-looking",
    ]
    assert sanitize(["short"], ["short"]) == ["short"]  # too short to be a secret


def test_recognised_credentials_are_masked() -> None:
    lines = sanitize(
        [
            "Authorization: Bearer abcdefghijklmnop",
            "token hf_" + "A" * 30,
            "url https://x/v1/dataset-downloads/tldl_" + "B" * 43,
        ],
        [],
    )
    assert "abcdefghijklmnop" not in lines[0]
    assert "A" * 30 not in lines[1]
    assert "B" * 43 not in lines[2]


def test_escape_sequences_go_and_control_characters_are_replaced() -> None:
    assert sanitize(["\x1b[1;31mred\x1b[0m \x1b]0;title\x07x\x00\r\x85"], []) == [
        "red x\ufffd\ufffd\ufffd"
    ]
    assert sanitize(["tab\tstays"], []) == ["tab\tstays"]


def test_a_secret_at_the_cut_is_masked_whole_before_the_cut() -> None:
    secret = "s3cr3t-" + "x" * 30
    line = "y" * (MAX_LINE_CHARS - 5) + secret
    (clean,) = sanitize([line], [secret])
    assert len(clean) == MAX_LINE_CHARS
    assert "s3cr3t" not in clean
    assert clean.endswith("[REDA")


def test_the_body_of_a_private_key_is_masked_line_by_line() -> None:
    lines = [
        "before",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
        "QyNTUxOQAAACBz",
        "-----END OPENSSH PRIVATE KEY-----",
        "after",
        "-----BEGIN PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
        "not base64: the key ended without its END line",
    ]
    clean = sanitize(lines, [])
    assert clean[0] == "before"
    assert "PRIVATE KEY" not in clean[1]
    assert clean[2:5] == [MASK, MASK, MASK]
    assert clean[5] == "after"
    assert clean[7] == MASK
    assert clean[8] == lines[8]
