"""JWT checks as an attacker would probe them: none, forged, expired, confused, malformed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import Authenticator, AuthError, KeysUnavailable

SECRET = "s" * 40
ISSUER = "https://idp.example"


def token(
    claims: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256", **header: Any
) -> str:
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 600, "iat": now} if claims is None else claims
    return jwt.encode(body, key, algorithm=alg, headers=header or None)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def check(auth: Authenticator, value: str | None) -> str:
    return await auth.authenticate(value)


@pytest.fixture
def hs() -> Authenticator:
    return Authenticator(hs256_secret=SECRET)


async def test_valid_hs256_token_gives_the_subject(hs: Authenticator) -> None:
    assert await check(hs, f"Bearer {token()}") == "alice"
    assert await check(hs, f"bearer   {token()}") == "alice"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("Basic YWxpY2U6cGFzcw==", "malformed Authorization"),
        ("Bearer", "malformed Authorization"),
        ("Bearer not-a-jwt", "malformed token"),
        ("Bearer a.b.c", "malformed token"),
    ],
)
async def test_missing_or_malformed(hs: Authenticator, header: str | None, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        await check(hs, header)


async def test_alg_none_is_refused(hs: Authenticator) -> None:
    forged = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'admin', 'exp': 9999999999})}."
    with pytest.raises(AuthError, match="not accepted here"):
        await check(hs, f"Bearer {forged}")


async def test_wrong_signature_is_refused(hs: Authenticator) -> None:
    with pytest.raises(AuthError, match="signature is invalid"):
        await check(hs, f"Bearer {token(key='t' * 40)}")


async def test_tampered_payload_is_refused(hs: Authenticator) -> None:
    head, _, sig = token().split(".")
    forged = f"{head}.{b64({'sub': 'mallory', 'exp': 9999999999})}.{sig}"
    with pytest.raises(AuthError, match="signature is invalid"):
        await check(hs, f"Bearer {forged}")


async def test_expired_is_refused(hs: Authenticator) -> None:
    old = int(time.time()) - 3600
    with pytest.raises(AuthError, match="expired"):
        await check(hs, f"Bearer {token({'sub': 'alice', 'exp': old})}")


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "alice"}, "'exp'"),
        ({"exp": 9999999999}, "'sub'"),
        ({"sub": "", "exp": 9999999999}, "not a valid user id"),
        ({"sub": "ali\nce", "exp": 9999999999}, "not a valid user id"),
        ({"sub": 42, "exp": 9999999999}, "malformed token|not a valid user id"),
    ],
)
async def test_claims_are_required(hs: Authenticator, claims: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthError, match=message):
        await check(hs, f"Bearer {token(claims)}")


def test_a_short_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Authenticator(hs256_secret="short")
    with pytest.raises(ValueError, match="exactly one"):
        Authenticator()
    with pytest.raises(ValueError, match="exactly one"):
        Authenticator(
            hs256_secret=SECRET, jwks_url="https://idp.example/jwks", issuer="i", audience="a"
        )
    with pytest.raises(ValueError, match="ISSUER and TUNELAB_JWT_AUDIENCE"):
        Authenticator(jwks_url="https://idp.example/jwks", issuer="i")
    with pytest.raises(ValueError, match="https"):
        Authenticator(jwks_url="http://idp.example/jwks", issuer="i", audience="a")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "kid": 123},
        {"alg": 'x", evil="1'},
        {"alg": "\u2603"},
        {"alg": ["HS256"]},
        {"typ": "JWT"},
    ],
)
async def test_odd_headers_are_refused_without_echo(
    hs: Authenticator, header: dict[str, Any]
) -> None:
    forged = f"{b64(header)}.{b64({'sub': 'alice', 'exp': 9999999999})}.c2ln"
    with pytest.raises(AuthError) as caught:
        await check(hs, f"Bearer {forged}")
    assert "evil" not in str(caught.value)
    assert "\u2603" not in str(caught.value)


# --- JWKS (production): a real HTTP server publishing the key set ------------------------


class Keys:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwks = {"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_url(keys: Keys) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(keys.jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


def rs256(keys: Keys, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": "bob",
        "exp": now + 600,
        "iss": "https://idp.example",
        "aud": "tunelab",
        **claims,
    }
    return jwt.encode(body, keys.private, algorithm="RS256", headers={"kid": "k1"})


async def test_jwks_token_is_accepted(keys: Keys, jwks_url: str) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    assert await check(auth, f"Bearer {rs256(keys)}") == "bob"


async def test_jwks_checks_issuer_and_audience(keys: Keys, jwks_url: str) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    with pytest.raises(AuthError, match="issued by someone else"):
        await check(auth, f"Bearer {rs256(keys, iss='https://evil.example')}")
    with pytest.raises(AuthError, match="another audience"):
        await check(auth, f"Bearer {rs256(keys, aud='other')}")


async def test_unknown_key_id_is_refused(keys: Keys, jwks_url: str) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 60},
        other,
        algorithm="RS256",
        headers={"kid": "k9"},
    )
    with pytest.raises(AuthError, match="key the provider does not list"):
        await check(auth, f"Bearer {forged}")


async def test_key_confusion_hs256_signed_with_public_key_is_refused(
    keys: Keys, jwks_url: str
) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    # The classic attack: sign HS256 with the (public) RSA key as the HMAC secret.
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    payload = b64({"sub": "admin", "exp": 9999999999})
    mac = hmac.new(keys.public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    with pytest.raises(AuthError, match="not accepted here"):
        await check(auth, f"Bearer {forged}")


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
async def test_algorithm_must_match_the_listed_key(keys: Keys, jwks_url: str, alg: str) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    header = b64({"alg": alg, "kid": "k1"})
    forged = f"{header}.{b64({'sub': 'admin', 'exp': 9999999999, 'iss': ISSUER})}.c2ln"
    with pytest.raises(AuthError, match="does not match its key"):
        await check(auth, f"Bearer {forged}")


async def test_token_for_another_application_is_refused(keys: Keys, jwks_url: str) -> None:
    auth = Authenticator(jwks_url=jwks_url, issuer=ISSUER, audience="tunelab")
    with pytest.raises(AuthError, match="another audience"):
        await check(auth, f"Bearer {rs256(keys, aud='some-other-app')}")
    no_audience = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 60, "iss": ISSUER},
        keys.private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(AuthError, match=r"'aud'|audience"):
        await check(auth, f"Bearer {no_audience}")


async def test_rs256_token_is_refused_where_only_the_dev_secret_is_configured(
    hs: Authenticator, keys: Keys
) -> None:
    with pytest.raises(AuthError, match="expected HS256"):
        await check(hs, f"Bearer {rs256(keys)}")


async def test_unreachable_jwks_is_not_blamed_on_the_caller(keys: Keys) -> None:
    auth = Authenticator(jwks_url="http://127.0.0.1:9/jwks.json", issuer=ISSUER, audience="t")
    with pytest.raises(KeysUnavailable):
        await check(auth, f"Bearer {rs256(keys)}")
