"""Nothing with a credential survives the tracing sanitizer, wherever an attacker plants it."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from services.common.sanitize import (
    MASK,
    TRUNCATED,
    sanitize_headers,
    sanitize_text,
    sanitize_url,
    sanitize_value,
    sensitive_name,
)

# Built at run time, so that no scanner mistakes this file for a leak.
ALNUM = "A1b2C3d4E5f6G7h8J9k0"
OPENAI = "sk-proj-" + ALNUM * 2
OPENAI_OLD = "sk-" + ALNUM * 2
ANTHROPIC = "sk-ant-api03-" + ALNUM * 4 + "-AA"
HF = "hf_" + ALNUM + "Zz" * 7
RUNPOD = "rpa_" + ALNUM * 2
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SESSION = "ASIA" + "Q3EGRZ7HXKMBJ2TW"
GOOGLE = "AIza" + "Sy" + ALNUM + "x9_-" + "Qw" * 4 + "Z"
STRIPE = "sk_live_" + ALNUM * 2
STRIPE_RESTRICTED = "rk_live_" + ALNUM
SLACK = "xoxb-" + "1234567890-0987654321-" + ALNUM
GITHUB = "ghp_" + ALNUM * 2
GITHUB_PAT = "github_pat_" + "11ABCDEFG0" + "_" + ALNUM * 3
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
TUNELAB = "tldl_" + ALNUM * 2
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + ALNUM
PEM = (
    f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY[::-1]}\n-----END RSA PRIVATE KEY-----"
)
OPAQUE = "Zq8-opaque-" + ALNUM  # a secret with no recognisable shape: masked by its name only

SHAPED = [
    OPENAI,
    OPENAI_OLD,
    ANTHROPIC,
    HF,
    RUNPOD,
    AWS,
    AWS_SESSION,
    GOOGLE,
    STRIPE,
    STRIPE_RESTRICTED,
    SLACK,
    GITHUB,
    GITHUB_PAT,
    JWT,
    TUNELAB,
]


def _gone(secret: str, output: str) -> None:
    assert secret not in output
    # No long stretch of it either (a shape masked only from its middle would still leak).
    assert not any(secret[i : i + 12] in output for i in range(4, len(secret) - 12))


# --- names -------------------------------------------------------------------------------------

SENSITIVE_NAMES = [
    "authorization", "Authorization", "AUTHORIZATION", "proxy-authorization", "Proxy-Authorization",
    "cookie", "Cookie", "set-cookie", "Set-Cookie", "x-api-key", "X-API-KEY", "api-key", "api_key",
    "apiKey", "ApiKey", "APIKey", "apikey", "x-goog-api-key", "openai_api_key", "OPENAI_API_KEY",
    "anthropic-api-key", "access_token", "accessToken", "refreshToken", "refresh_token",
    "id_token", "x-auth-token", "X-Auth-Token", "session_token", "X-Amz-Security-Token",
    "csrf_token", "token", "Token", "oauth_token", "bearer", "accesstoken", "api_tokens",
    "client_secret", "clientSecret", "secret", "secrets", "webhook_secret", "aws_secret_access_key",
    "X-Amz-Signature", "x-hub-signature-256", "signature", "sig", "password", "Password",
    "db_password", "passwd", "pwd", "passphrase", "db_pass", "private_key", "privateKey",
    "private-key", "ssh_key", "key", "Key", "access_key", "secret_key", "signing_key",
    "credentials", "credential", "X-Amz-Credential", "creds", "auth", "basic_auth", "jwt",
    "x.password", "user.password", "api key", "API-Key-2", "--api-key",
]  # fmt: skip

HARMLESS_NAMES = [
    "max_tokens", "maxTokens", "max_completion_tokens", "input_tokens", "output_tokens",
    "total_tokens", "prompt_tokens", "completion_tokens", "token_count", "tokens_per_second",
    "cache_read_input_tokens", "cache_creation_input_tokens", "reasoning_tokens", "tokens",
    "token_type", "token_ids", "eos_token", "pad_token_id", "bos_token", "page_token",
    "next_page_token", "nextPageToken", "tokenizer", "tokenizer_name", "keyboard", "monkey",
    "primary_key_column", "primary_key", "sort_key", "cache_key", "idempotency_key", "public_key",
    "key_id", "keys", "model", "temperature", "content-type", "Content-Length", "user-agent",
    "x-request-id", "session_id", "authorization_url", "auth_type", "signature_version",
    "pass_rate", "pass@1", "secretary", "author", "messages", "", "-", "__",
]  # fmt: skip


@pytest.mark.parametrize("name", SENSITIVE_NAMES)
def test_credential_names_are_sensitive(name: str) -> None:
    assert sensitive_name(name)


@pytest.mark.parametrize("name", HARMLESS_NAMES)
def test_llm_bookkeeping_names_are_not(name: str) -> None:
    assert not sensitive_name(name)


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SENSITIVE_NAMES if n.strip("-")])
def test_a_sensitive_header_is_masked_whatever_its_value(name: str) -> None:
    out = sanitize_headers({name: OPAQUE, "content-type": "application/json"})
    assert out == {name: MASK, "content-type": "application/json"}


def test_headers_keep_names_and_mask_each_spelling_and_shape() -> None:
    headers = {
        "Authorization": f"Bearer {OPAQUE}",
        "authorization": f"Basic {OPAQUE}",
        "X-Api-Key": OPAQUE,
        "x_api_key": OPAQUE,
        "Cookie": f"session={OPAQUE}; theme=dark",
        "X-Debug": f"retrying with {ANTHROPIC}",
        "Referer": f"https://app.example.com/cb?code=1&access_token={OPAQUE}",
        "X-Forwarded-For": "10.0.0.1",
        "User-Agent": "openai-python/1.40.0",
        "OpenAI-Organization": "org-abc",
    }
    out = sanitize_headers(headers)
    assert list(out) == list(headers)
    dumped = json.dumps(out)
    for secret in (OPAQUE, ANTHROPIC):
        _gone(secret, dumped)
    assert out["X-Forwarded-For"] == "10.0.0.1"
    assert out["User-Agent"] == "openai-python/1.40.0"
    assert out["OpenAI-Organization"] == "org-abc"
    assert out["Referer"] == f"https://app.example.com/cb?code=1&access_token={MASK}"
    assert headers["Authorization"] == f"Bearer {OPAQUE}"  # the input is untouched


# --- URLs --------------------------------------------------------------------------------------

URL_SECRETS = [
    (f"https://alice:{OPAQUE}@api.example.com/v1/chat", OPAQUE),
    (f"postgres://app:{OPAQUE}@db.internal:5432/tunelab?sslmode=require", OPAQUE),
    (f"https://alice:p@ss{OPAQUE}@host/x", OPAQUE),
    (f"https://x-access-token:{GITHUB}@github.com/o/r.git", GITHUB),
    (f"https://{GITHUB}@github.com/o/r.git", GITHUB),
    (f"https://maps.googleapis.com/maps/api?key={GOOGLE}&q=paris", GOOGLE),
    (f"https://h/v1?api_key={OPAQUE}", OPAQUE),
    (f"https://h/v1?API_KEY={OPAQUE}&b=2", OPAQUE),
    (f"https://h/v1?api%5Fkey={OPAQUE}", OPAQUE),
    (f"https://h/v1?api%255Fkey={OPAQUE}", OPAQUE),
    (f"https://h/v1?x-goog-api-key={OPAQUE}", OPAQUE),
    (f"https://h/v1?token=a&token={OPAQUE}&token=", OPAQUE),
    (f"https://h/v1?a=1&access_token={OPAQUE}#frag", OPAQUE),
    (f"https://h/v1?sig={OPAQUE}&se=2030-01-01&sp=r", OPAQUE),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential={AWS}%2F2024&X-Amz-Signature={OPAQUE}", AWS),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential=x&X-Amz-Signature={OPAQUE}", OPAQUE),
    (f"https://h/v1?X-Amz-Security-Token={OPAQUE}", OPAQUE),
    (f"https://h/cb#access_token={OPAQUE}&token_type=bearer", OPAQUE),
    (f"https://h/cb#{OPENAI}", OPENAI),
    (f"https://h/v1/keys/{OPENAI}/usage", OPENAI),
    (f"https://h/v1/keys/{OPENAI.replace('-', '%2D')}/usage", OPENAI.replace("-", "%2D")),
    (f"https://h/v1?state={OPENAI}", OPENAI),
    (f"https://h/v1?state={OPENAI.replace('-', '%2D')}", OPENAI.replace("-", "%2D")),
    (f"https://h/v1?q=password%3D{OPAQUE}", OPAQUE),
    (f"https://h/v1?auth=Bearer+{OPAQUE}", OPAQUE),
    (f"https://h/v1?{OPENAI}", OPENAI),
    (f"https://h/v1?password={OPAQUE};x=1", OPAQUE),
    (f"HTTPS://ALICE:{OPAQUE}@HOST", OPAQUE),
    (f"wss://u:{OPAQUE}@h/ws?jwt={JWT}", JWT),
]


@pytest.mark.parametrize(("url", "secret"), URL_SECRETS)
def test_url_credentials_are_masked(url: str, secret: str) -> None:
    out = sanitize_url(url)
    _gone(secret, out)
    assert MASK in out or "[REDACTED]" in out


def test_url_keeps_user_host_order_and_encoding() -> None:
    url = f"https://alice:{OPAQUE}@api.example.com:8443/v1/a%20b?x=1&api_key={OPAQUE}&y=%2F&z#top"
    expected = f"https://alice:{MASK}@api.example.com:8443/v1/a%20b?x=1&api_key={MASK}&y=%2F&z#top"
    assert sanitize_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1/chat/completions",
        "https://api.anthropic.com/v1/messages?beta=true",
        "https://h/v1/models?limit=20&max_tokens=512&page_token=abc&order=desc",
        "https://h/search?q=what+is+a+token%3F&lang=en",
        "https://alice@h/x",
        "https://h/a/b/?",
        "https://h/a#section-2",
        "http://[::1]:8080/x?y=1",
        "/relative/path?model=gpt-4o",
        "",
    ],
)
def test_ordinary_urls_are_unchanged(url: str) -> None:
    assert sanitize_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[zzzz]/",
        "://nohost",
        "https://%zz%@h",
        f"not a url {OPENAI}",
        "https://h:999999999/x",
        "\x00\xff://\ud800",
        "?&&==&",
        "#",
    ],
)
def test_malformed_urls_do_not_raise(url: str) -> None:
    assert OPENAI not in sanitize_url(url)


# --- free text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", SHAPED)
@pytest.mark.parametrize(
    "template",
    [
        "{s}",
        "my key is {s}, please use it",
        "line one\nexport OPENAI_API_KEY={s}\nline three",
        '{{"messages": [{{"role": "user", "content": "use {s} now"}}]}}',
        "```python\nclient = OpenAI(api_key='{s}')\n```",
        "`{s}`",
        "(({s}))",
        "Error 401: invalid credentials for key={s}.",
        "curl -H 'Authorization: Bearer {s}' https://h",
        "url=https://h/x/{s}/y",
    ],
)
def test_key_shapes_are_masked_in_text(secret: str, template: str) -> None:
    _gone(secret, sanitize_text(template.format(s=secret)))


@pytest.mark.parametrize(
    "text",
    [
        f"password={OPAQUE}",
        f"password = {OPAQUE}",
        f"PASSWORD: {OPAQUE}",
        f"db_password: '{OPAQUE}'",
        f'{{"password": "{OPAQUE}", "max_tokens": 512}}',
        f'{{"api_key":"{OPAQUE}"}}',
        f'"{{\\"client_secret\\": \\"{OPAQUE}\\"}}"',
        f"api_key: {OPAQUE}",
        f"x-api-key: {OPAQUE}",
        f"set OPENAI_API_KEY={OPAQUE} and run",
        f'aws_secret_access_key = "{OPAQUE}"',
        f"https://h/v1?ok=1&access_token={OPAQUE}&b=2",
        f"please log in with user=bob&pwd={OPAQUE}",
        f"Authorization: Token {OPAQUE}",
        f"authorization=Digest {OPAQUE}",
        f"Cookie: theme=dark; session={OPAQUE}",
        f"set-cookie: sid={OPAQUE}; HttpOnly",
        f"could not connect to postgres://app:{OPAQUE}@db:5432/x",
        f"redis://:{OPAQUE}@cache:6379/0",
        f"mongodb+srv://u:{OPAQUE}@c.example.net/?retryWrites=true",
        f"config:\n  database:\n    password: {OPAQUE}\n  pool: 5",
        f"$ curl https://h?key={OPAQUE}",
        f"https: //x token={OPAQUE}",
        f"https://h/?a=b:c&token={OPAQUE}",
        f"if password == '{OPAQUE}':",
        f"{{password: `{OPAQUE}`}}".replace("`", "'"),
        f"refreshToken={OPAQUE}&accessToken={OPAQUE}",
    ],
)
def test_credential_pairs_in_text_are_masked(text: str) -> None:
    _gone(OPAQUE, sanitize_text(text))


@pytest.mark.parametrize(
    "pem",
    [
        PEM,
        PEM.replace("RSA ", ""),
        PEM.replace("RSA", "OPENSSH"),
        PEM.replace("RSA", "EC"),
        PEM.replace("RSA", "ENCRYPTED").replace("\n", "\nProc-Type: 4,ENCRYPTED\n", 1),
        PEM.replace("\n", "\\n"),  # inside a JSON string
        PEM.replace("\n", "\r\n"),
    ],
)
def test_private_keys_are_masked_whole(pem: str) -> None:
    out = sanitize_text(f"here is my key:\n{pem}\nthanks!")
    _gone(PEM_BODY, out)
    _gone(PEM_BODY[::-1], out)
    assert out.startswith("here is my key:")
    assert out.endswith("thanks!")


def test_a_truncated_private_key_is_masked_to_where_a_pem_body_cannot_go() -> None:
    truncated = PEM.rsplit("\n", 1)[0]
    out = sanitize_text(f"key: {truncated}\nthanks! bye")
    _gone(PEM_BODY, out)
    _gone(PEM_BODY[::-1], out)
    assert out.endswith("! bye")


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris. Tokens are pieces of words.",
        "max_tokens: 512, temperature: 0.7, top_p: 1",
        '{"model": "gpt-4o-mini", "max_tokens": 512, "usage": {"input_tokens": 12}}',
        "input_tokens=12 output_tokens=30 total_tokens=42 cache_read_input_tokens=0",
        "Use the key-value store; the primary_key: id. Key: C major.",
        "A monkey typed on the keyboard for 3 hours.",
        "Authorization is required; see the docs at https://docs.example.com/auth?lang=en.",
        "The password policy requires 12 characters.",
        "claude-3-5-sonnet-20241022 and gpt-4o-2024-08-06",
        "def f(token_ids: list[int]) -> str:\n    return tokenizer.decode(token_ids)",
        "sk-short and AKIA1234 and eyJhbG and hf_x",
        "See https://github.com/owner/repo/blob/main/README.md#install for details.",
        "eval: pass@1 = 0.82, pass_rate: 0.9",
        "",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert sanitize_text(text) == text


NEAR_MISSES = [
    "eyJ-",
    "eyJaaaaa.",
    "sk-",
    "sk-ant-",
    "AKIA",
    "AIza-",
    "-----BEGIN PRIVATE KEY-----",
    "-----BEGIN ",
    "-",
    "password",
    "password:",
    'password="',
    "api_key ",
    "x" * 200 + "=",
    "://",
    "://a:",
    "://a:b",
    "Bearer ",
    "basic\t",
    "authorization: ",
    "cookie:",
    "a=b&",
    "%25",
    "tlab_-",
    "github_pat_",
    "xoxb-",
    "\\",
    'k\\"',
]


@pytest.mark.parametrize("chunk", NEAR_MISSES)
def test_sanitizing_is_linear_time(chunk: str) -> None:
    # 256 KB of one near-match: a quadratic pattern (as the old JWT one was: 0.8 s for 80 KB)
    # takes many seconds here.
    text = (chunk * (256_000 // len(chunk) + 1))[:256_000]
    started = time.perf_counter()
    sanitize_text(text)
    sanitize_url("https://h/?" + text[:64_000])
    assert time.perf_counter() - started < 0.5


def test_a_megabyte_of_near_matches_is_fast() -> None:
    run = 1_000_000 // len(NEAR_MISSES)
    text = "".join((chunk * (run // len(chunk) + 1))[:run] for chunk in NEAR_MISSES)
    assert len(text) >= 990_000
    started = time.perf_counter()
    sanitize_text(text)
    assert time.perf_counter() - started < 1.0


# --- structures --------------------------------------------------------------------------------


def test_nested_structures_are_masked_at_any_depth() -> None:
    value: dict[str, Any] = {
        "model": "gpt-4o",
        "max_tokens": 512,
        "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 0},
        "metadata": {
            "user": "alice",
            "Authorization": {"scheme": "Bearer", "value": OPAQUE},
            "clientSecret": None,
            "tools": [
                {"name": "search", "apiKey": OPAQUE},
                {"name": "db", "config": {"dsn": f"postgres://u:{OPAQUE}@db/x", "pool": 5}},
                {"name": "notes", "args": ["plain", f"token={OPAQUE}", [[{"password": 1234}]]]},
            ],
        },
        "messages": [
            {"role": "system", "content": f"You are helpful. Key: {OPENAI}"},
            {"role": "user", "content": f"```\nAWS_ACCESS_KEY_ID={AWS}\n{PEM}\n```"},
        ],
        OPENAI: "a secret used as a key",
        "tags": ("a", "b"),
        "score": 0.5,
        "ok": True,
    }
    original = copy.deepcopy(value)
    out = sanitize_value(value)
    assert value == original  # never mutated
    dumped = json.dumps(out)
    for secret in (OPAQUE, OPENAI, AWS, PEM_BODY, "1234"):
        _gone(secret, dumped)
    assert out["model"] == "gpt-4o"
    assert out["max_tokens"] == 512
    assert out["usage"] == original["usage"]
    assert out["metadata"]["user"] == "alice"
    assert out["metadata"]["Authorization"] == MASK
    assert out["metadata"]["clientSecret"] == MASK
    assert out["metadata"]["tools"][0] == {"name": "search", "apiKey": MASK}
    assert out["metadata"]["tools"][2]["args"][0] == "plain"
    assert out["metadata"]["tools"][2]["args"][2] == [[{"password": MASK}]]
    assert out["tags"] == ["a", "b"]
    assert out["score"] == 0.5
    assert out["ok"] is True
    assert out is not value
    assert out["usage"] is not value["usage"]


@pytest.mark.parametrize("name", ["api_key", "Password", "x-auth-token", "private_key", "sig"])
@pytest.mark.parametrize("secret", [OPAQUE, 12345, 1.5, True, None, [OPAQUE], {"v": OPAQUE}])
def test_a_sensitive_key_masks_any_value(name: str, secret: Any) -> None:
    assert sanitize_value([{"outer": {name: secret}}]) == [{"outer": {name: MASK}}]


@pytest.mark.parametrize("value", [None, True, False, 0, -1, 3.25, "", "hello", [], {}])
def test_plain_values_pass_through(value: Any) -> None:
    assert sanitize_value(value) == value


def test_depth_is_bounded() -> None:
    deep: Any = OPAQUE
    for i in range(5000):
        deep = [deep] if i % 2 else {"level": deep}
    out = sanitize_value(deep)  # no RecursionError
    node = out
    for _ in range(65):
        node = node[0] if isinstance(node, list) else node["level"]
    assert node == TRUNCATED
    assert OPAQUE not in json.dumps(out)


def test_depth_limit_keeps_what_is_shallow_enough() -> None:
    deep: Any = "leaf"
    for _ in range(64):
        deep = [deep]
    assert json.dumps(sanitize_value(deep)) == json.dumps(deep)
    assert TRUNCATED in json.dumps(sanitize_value([deep]))


def test_cycles_are_cut_by_the_depth_limit() -> None:
    loop: dict[str, Any] = {"name": "x"}
    loop["self"] = loop
    out = sanitize_value(loop)
    assert TRUNCATED in json.dumps(out)


def test_unknown_types_are_stored_as_sanitized_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return f"client with {OPENAI}"

    out = sanitize_value({"client": Opaque()})
    assert isinstance(out["client"], str)
    _gone(OPENAI, out["client"])
