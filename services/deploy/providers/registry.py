"""Which provider object serves a run: the local provider, the container provider (both one
per service, needing no key), or a RunPod client holding a user's own API key (decrypted for as
long as the client is open)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from services.deploy.keys import KeyRing, KeyRingError
from services.deploy.providers.base import Provider, ProviderError, ProviderErrorKind
from services.deploy.providers.container import ContainerProvider
from services.deploy.providers.local import LocalProvider
from services.deploy.providers.runpod import RunPodProvider
from services.deploy.settings import DeploySettings
from services.deploy.spec import ON_THIS_HOST
from services.deploy.store import DeploymentStore

log = logging.getLogger(__name__)

RunPodFactory = Callable[[str], Provider]
# Not a GPU provider: a token pods get as HF_TOKEN, to download gated models.
HUGGING_FACE = "huggingface"

NO_KEY = (
    "no RunPod API key is set for you: create one in RunPod's console (Settings, API Keys) and "
    'store it with PUT /v1/provider-keys/runpod {"api_key": ...}'
)


class Providers:
    def __init__(
        self,
        settings: DeploySettings,
        store: DeploymentStore,
        keyring: KeyRing,
        local: LocalProvider,
        runpod: RunPodFactory | None = None,
        container: ContainerProvider | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.local = local
        self.container = container
        self._runpod = runpod or (
            lambda key: RunPodProvider(
                key, rest_url=settings.runpod_rest_url, graphql_url=settings.runpod_graphql_url
            )
        )

    async def has_key(self, owner: str, provider: str) -> bool:
        if provider in ON_THIS_HOST:
            return True
        return await self.store.key_ciphertext(owner, provider) is not None

    def _container(self) -> ContainerProvider:
        if self.container is None:
            raise ProviderError(
                ProviderErrorKind.NOT_ALLOWED, "the container provider is not set up here"
            )
        return self.container

    async def hugging_face_token(self, owner: str) -> str | None:
        ciphertext = await self.store.key_ciphertext(owner, HUGGING_FACE)
        if ciphertext is None:
            return None
        try:
            return self.keyring.decrypt(ciphertext)
        except KeyRingError as exc:
            raise ProviderError(ProviderErrorKind.UNAUTHENTICATED, str(exc)) from None

    async def key_ciphertext(self, owner: str, provider: str) -> str | None:
        """The owner's key for `provider`, still encrypted (None for local and container)."""
        if provider in ON_THIS_HOST:
            return None
        ciphertext = await self.store.key_ciphertext(owner, provider)
        if ciphertext is None:
            raise ProviderError(ProviderErrorKind.UNAUTHENTICATED, NO_KEY)
        return ciphertext

    @asynccontextmanager
    async def open(
        self, owner: str, provider: str, ciphertext: str | None = None
    ) -> AsyncIterator[Provider]:
        """The provider, with `ciphertext`'s key (the one a run's pod was rented with) or else
        the owner's current key."""
        if provider == "local":
            yield self.local
            return
        if provider == "container":
            yield self._container()
            return
        ciphertext = ciphertext or await self.key_ciphertext(owner, provider)
        assert ciphertext is not None
        try:
            key = self.keyring.decrypt(ciphertext)
        except KeyRingError as exc:
            raise ProviderError(ProviderErrorKind.UNAUTHENTICATED, str(exc)) from None
        client = self._runpod(key)
        try:
            yield client
        finally:
            await client.aclose()

    async def accounts(self) -> AsyncIterator[tuple[str, Provider]]:
        """Every account pods may run in, for the orphan sweep: ("", local), ("",
        container) where it is set up, then each stored RunPod key's. A key that cannot be
        decrypted is logged and passed over."""
        yield "", self.local
        if self.container is not None and self.container.configured():
            yield "", self.container
        for owner, ciphertext in await self.store.all_keys("runpod"):
            try:
                client = self._runpod(self.keyring.decrypt(ciphertext))
            except KeyRingError as exc:
                log.error("a stored key cannot be decrypted", extra={"error": str(exc)})
                continue
            try:
                yield owner, client
            finally:
                await client.aclose()
