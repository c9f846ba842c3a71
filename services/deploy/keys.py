"""Provider API keys: which providers take one. The encryption is services/common/keyring.py,
under TUNELAB_DEPLOY_KEYS_KEK (`python -m services.deploy keys rotate` re-encrypts)."""

from __future__ import annotations

from services.common.errors import invalid_argument
from services.common.keyring import KeyRing, KeyRingError, last4, valid_api_key
from services.deploy.spec import ON_THIS_HOST

__all__ = ["KEK_VARIABLE", "KeyRing", "KeyRingError", "keyed_provider", "last4", "valid_api_key"]

KEK_VARIABLE = "TUNELAB_DEPLOY_KEYS_KEK"
# "huggingface": a token pods get as HF_TOKEN, for gated base models.
KEYED_PROVIDERS = ("runpod", "huggingface")


def keyed_provider(provider: str) -> str:
    """The provider a key is set for, checked: one that takes a key."""
    if provider in ON_THIS_HOST:
        raise invalid_argument("provider", f"the {provider} provider needs no key")
    if provider not in KEYED_PROVIDERS:
        raise invalid_argument("provider", f"provider must be one of {', '.join(KEYED_PROVIDERS)}")
    return provider
