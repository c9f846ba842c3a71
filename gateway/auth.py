"""Bearer JWT authentication: HS256 with a shared secret in development, a JWKS in production.

The algorithm is never taken on the token's word: HS256 tokens are checked only against the
configured secret, asymmetric ones only against the JWKS, and `none` is refused outright, so
neither "alg: none" nor the RS256-to-HS256 confusion gets through.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

import jwt

from services.common.identity import valid_user_id

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class AuthError(Exception):
    """Why a request is not authenticated; the message is safe to return to the caller."""


class KeysUnavailable(Exception):
    """The identity provider's JWKS could not be fetched: a 503, not the caller's fault."""


class Authenticator:
    """Exactly one mode: an HS256 secret (development) or a JWKS (production). In JWKS mode the
    issuer and audience are required: without them a token the identity provider issued for
    any other application would be accepted here."""

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        if bool(hs256_secret) == bool(jwks_url):
            raise ValueError(
                "configure exactly one of TUNELAB_JWT_SECRET (development) and TUNELAB_JWKS_URL"
            )
        if hs256_secret is not None and len(hs256_secret) < 32:
            raise ValueError("TUNELAB_JWT_SECRET must be at least 32 characters")
        if jwks_url:
            if not (issuer and audience):
                raise ValueError(
                    "with TUNELAB_JWKS_URL, set TUNELAB_JWT_ISSUER and TUNELAB_JWT_AUDIENCE too"
                )
            url = urlparse(jwks_url)
            if url.scheme != "https" and url.hostname not in ("127.0.0.1", "::1", "localhost"):
                raise ValueError("TUNELAB_JWKS_URL must be an https:// URL")
        self.hs256_secret = hs256_secret
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=5) if jwks_url else None

    async def authenticate(self, authorization: str | None) -> str:
        """The user id (`sub`) of a valid `Authorization: Bearer <JWT>` header.

        AuthError messages are fixed texts: nothing of the token is echoed back."""
        if not authorization:
            raise AuthError("missing credentials: send Authorization: Bearer <JWT>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed Authorization header: expected 'Bearer <JWT>'")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token: not a JWT") from exc
        key, algorithm = await self._key(token, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired: get a new one") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token signature is invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token was issued by someone else") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token is meant for another audience") from exc
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise AuthError("malformed token") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not valid_user_id(subject):
            raise AuthError("token 'sub' is not a valid user id")
        return subject

    async def _key(self, token: str, alg: object) -> tuple[Any, str]:
        """The key to check the token with, and the one algorithm it may use."""
        if self.hs256_secret:
            if alg != "HS256":
                raise AuthError("token algorithm is not accepted here (expected HS256)")
            return self.hs256_secret, "HS256"
        assert self._jwks is not None
        if alg not in ASYMMETRIC:
            raise AuthError("token algorithm is not accepted here")
        try:
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailable("cannot fetch the identity provider's keys") from exc
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise AuthError("token is signed with a key the provider does not list") from exc
        if signing.algorithm_name != alg:
            raise AuthError("token algorithm does not match its key")
        return signing.key, str(alg)
