"""API keys users store with a service, encrypted at rest with Fernet (AES-128-CBC +
HMAC-SHA256).

The key-encryption keys come from the environment (a variable per service): the first
encrypts, every one decrypts, so a new key can be put in front and the stored keys re-encrypted
before the old one is dropped. A plaintext key lives only as long as the call that needs it;
only its last four characters are shown.
"""

from __future__ import annotations

import re

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.common import redact

# What a key may look like: printable ASCII without spaces (RunPod keys are ~40 characters).
_KEY_SHAPE = re.compile(r"[\x21-\x7e]{8,512}")


class KeyRingError(Exception):
    pass


class KeyRing:
    """`keks`: comma-separated Fernet keys, read from the environment variable `variable`
    (named in the errors, so that they say what to fix)."""

    def __init__(self, keks: str, variable: str) -> None:
        parts = [part.strip() for part in keks.split(",") if part.strip()]
        if not parts:
            raise KeyRingError(
                f"{variable} is not set: set it to a Fernet key (python -c "
                "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'); "
                "`make run` creates one under var/secrets"
            )
        try:
            fernets = [Fernet(part) for part in parts]
        except ValueError:
            raise KeyRingError(
                f"{variable} holds a value that is not a Fernet key (32 url-safe "
                "base64-encoded bytes); keys are separated by commas"
            ) from None
        for part in parts:
            redact.register(part)
        self._variable = variable
        self._fernet = MultiFernet(fernets)

    def encrypt(self, api_key: str) -> str:
        return self._fernet.encrypt(api_key.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            plain = self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise KeyRingError(
                f"a stored key cannot be decrypted with {self._variable}: was the "
                "key-encryption key replaced without keeping the old one?"
            ) from None
        redact.register(plain)
        return plain

    def rotate(self, ciphertext: str) -> str:
        """The same key, encrypted with the first key-encryption key."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise KeyRingError("a stored key cannot be decrypted for rotation") from None


def valid_api_key(api_key: str) -> bool:
    return bool(_KEY_SHAPE.fullmatch(api_key))


def last4(api_key: str) -> str:
    return api_key[-4:]
