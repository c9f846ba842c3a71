"""Provider keys at rest: encrypted, rotatable to a new key-encryption key, never shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.fernet import Fernet

from services.common.db import Database
from services.deploy.keys import KEK_VARIABLE, KeyRing, KeyRingError
from services.deploy.service import MIGRATIONS
from services.deploy.spec import parse
from services.deploy.store import Change, DeploymentStore
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb


async def test_rotation_re_encrypts_every_key_for_the_new_kek(empty_db_url: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    db = Database(empty_db_url)
    try:
        await MIGRATIONS.upgrade(db)
        store = DeploymentStore(db)
        now = datetime.now(UTC)
        ring = KeyRing(old, KEK_VARIABLE)
        secrets = {f"user-{i}": f"rpa_{i:02d}" + "S" * 36 for i in range(7)}
        for owner, key in secrets.items():
            await store.set_key(owner, "runpod", ring.encrypt(key), key[-4:], now)
        stored = dict(await store.all_keys("runpod"))
        assert all(key not in stored[owner] for owner, key in secrets.items())

        rotated = await store.rotate_keys(KeyRing(f"{new},{old}", KEK_VARIABLE).rotate, now)
        assert rotated == len(secrets)
        only_new = KeyRing(new, KEK_VARIABLE)
        for owner, ciphertext in await store.all_keys("runpod"):
            assert only_new.decrypt(ciphertext) == secrets[owner]
        with pytest.raises(KeyRingError, match="cannot be decrypted"):
            KeyRing(old, KEK_VARIABLE).decrypt(ciphertext)
    finally:
        await db.close()


async def test_rotation_covers_the_copies_live_runs_hold(empty_db_url: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    db = Database(empty_db_url)
    try:
        await MIGRATIONS.upgrade(db)
        store = DeploymentStore(db)
        now = datetime.now(UTC)
        spec = parse(
            api.DeploymentSpec(
                provider="local",
                dataset_id="ds_x",
                method=pb.TRAINING_METHOD_SFT,
                limits=pb.Limits(max_runtime_minutes=5, max_cost_usd=1),
            ),
            default_image="img",
        )
        run = await store.create(
            owner="alice",
            request_id=None,
            spec=spec,
            dataset_sha256="0" * 64,
            dataset_size=1,
            hourly_usd=0,
            now=now,
        )
        ring = KeyRing(old, KEK_VARIABLE)

        def hold(current: Any) -> Change:
            return Change(
                job_token_ciphertext=ring.encrypt("tljb_secret"),
                provider_key_ciphertext=ring.encrypt("rpa_key"),
            )

        await store.mutate(run.id, now, hold)
        await store.rotate_keys(KeyRing(f"{new},{old}", KEK_VARIABLE).rotate, now)
        after = await store.get_any(run.id)
        assert after is not None
        only_new = KeyRing(new, KEK_VARIABLE)
        assert only_new.decrypt(after.job_token_ciphertext or "") == "tljb_secret"
        assert only_new.decrypt(after.provider_key_ciphertext or "") == "rpa_key"
    finally:
        await db.close()


@pytest.mark.parametrize("kek", ["", " , ", "not-a-fernet-key"])
def test_a_missing_or_malformed_kek_says_how_to_make_one(kek: str) -> None:
    with pytest.raises(KeyRingError, match="TUNELAB_DEPLOY_KEYS_KEK") as caught:
        KeyRing(kek, KEK_VARIABLE)
    if kek.strip(" ,"):  # a key-encryption key, even a malformed one, is never echoed
        assert kek not in str(caught.value)
