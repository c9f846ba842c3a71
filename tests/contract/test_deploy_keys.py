"""Provider keys at rest: encrypted, rotatable to a new key-encryption key, never shown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet

from services.common.db import Database
from services.deploy.keys import KeyRing, KeyRingError
from services.deploy.service import MIGRATIONS
from services.deploy.store import DeploymentStore


async def test_rotation_re_encrypts_every_key_for_the_new_kek(empty_db_url: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    db = Database(empty_db_url)
    try:
        await MIGRATIONS.upgrade(db)
        store = DeploymentStore(db)
        now = datetime.now(UTC)
        ring = KeyRing(old)
        secrets = {f"user-{i}": f"rpa_{i:02d}" + "S" * 36 for i in range(7)}
        for owner, key in secrets.items():
            await store.set_key(owner, "runpod", ring.encrypt(key), key[-4:], now)
        stored = dict(await store.all_keys("runpod"))
        assert all(key not in stored[owner] for owner, key in secrets.items())

        rotated = await store.rotate_keys(KeyRing(f"{new},{old}").rotate, now)
        assert rotated == len(secrets)
        only_new = KeyRing(new)
        for owner, ciphertext in await store.all_keys("runpod"):
            assert only_new.decrypt(ciphertext) == secrets[owner]
        with pytest.raises(KeyRingError, match="cannot be decrypted"):
            KeyRing(old).decrypt(ciphertext)
    finally:
        await db.close()


@pytest.mark.parametrize("kek", ["", " , ", "not-a-fernet-key"])
def test_a_missing_or_malformed_kek_says_how_to_make_one(kek: str) -> None:
    with pytest.raises(KeyRingError, match="TUNELAB_DEPLOY_KEYS_KEK") as caught:
        KeyRing(kek)
    if kek.strip(" ,"):  # a key-encryption key, even a malformed one, is never echoed
        assert kek not in str(caught.value)
