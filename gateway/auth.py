"""Bearer JWT authentication: HS256 with a shared secret in development, a JWKS in production.

The algorithm is never taken on the token's word: HS256 tokens are checked only against the
configured secret, asymmetric ones only against the JWKS, and `none` is refused outright, so
neither "alg: none" nor the RS256-to-HS256 confusion gets through.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt

from services.common.identity import valid_user_id

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class AuthError(Exception):
    """Why a request is not authenticated; the message is safe to return to the caller."""


class KeysUnavailable(Exception):
    """The identity provider's JWKS could not be fetched: a 503, not the caller's fault."""


class Authenticator:
    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        if not hs256_secret and not jwks_url:
            raise ValueError("configure TUNELAB_JWT_SECRET (development) or TUNELAB_JWKS_URL")
        if hs256_secret is not None and len(hs256_secret) < 32:
            raise ValueError("TUNELAB_JWT_SECRET must be at least 32 characters")
        self.hs256_secret = hs256_secret
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None

    async def authenticate(self, authorization: str | None) -> str:
        """The user id (`sub`) of a valid `Authorization: Bearer <JWT>` header."""
        if not authorization:
            raise AuthError("missing credentials: send Authorization: Bearer <JWT>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed Authorization header: expected 'Bearer <JWT>'")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthError("malformed token: not a JWT") from exc
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.hs256_secret:
            key, algorithms = self.hs256_secret, ["HS256"]
        elif alg in ASYMMETRIC and self._jwks is not None:
            try:
                signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError as exc:
                raise KeysUnavailable("cannot fetch the identity provider's keys") from exc
            except jwt.PyJWKClientError as exc:
                raise AuthError("token is signed with a key the provider does not list") from exc
            key, algorithms = signing.key, [str(alg)]
        else:
            raise AuthError(f"token algorithm {alg!r} is not accepted here")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
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
        except jwt.InvalidTokenError as exc:
            raise AuthError("malformed token") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not valid_user_id(subject):
            raise AuthError("token 'sub' is not a valid user id")
        return subject
