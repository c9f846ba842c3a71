"""A Change carries typed fields only, and the store applies every one of them."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest

from services.common.db import Database
from services.deploy.service import MIGRATIONS
from services.deploy.spec import parse
from services.deploy.states import State
from services.deploy.store import UNSET, Change, DeploymentStore, Output, RunError
from tunelab.deploy.v1 import deploy_service_pb2 as api
from tunelab.deploy.v1 import deployments_pb2 as pb

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
# Every field set, each to a value a new deployment does not have.
EVERY_FIELD = Change(
    state=State.TRAINING,
    job_token_hash="h" * 64,
    job_token_ciphertext="token-ciphertext",
    provider_key_ciphertext="key-ciphertext",
    pod_id="pod-1",
    gpu_type="NVIDIA RTX A4000",
    hourly_usd=0.25,
    cost_usd=1.5,
    cost_base_usd=0.5,
    progress={"step": 3.0, "loss": 0.5},
    system_info={"gpu": "A4000"},
    error=RunError("trainer_failed", "it broke", 2, ("line 1", "line 2")),
    output=Output("b" * 32, 10, "c" * 64, NOW - timedelta(minutes=1)),
    billing_started_at=NOW - timedelta(hours=1),
    started_at=NOW - timedelta(minutes=50),
    last_report_at=NOW - timedelta(minutes=2),
    pod_released_at=NOW,
    billed_usd=0.42,
    billed_at=NOW,
)


def test_a_change_carries_only_the_fields_it_declares() -> None:
    with pytest.raises(TypeError):
        Change(cost=1.0)  # type: ignore[call-arg]
    change = Change()
    with pytest.raises(AttributeError):
        change.cost = 1.0  # type: ignore[attr-defined]
    assert change.empty()
    assert all(getattr(EVERY_FIELD, f.name) is not UNSET for f in fields(Change))


async def test_mutate_applies_every_field(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        await MIGRATIONS.upgrade(db)
        store = DeploymentStore(db)
        spec = parse(
            api.DeploymentSpec(
                provider="local",
                dataset_id="ds_x",
                method=pb.TRAINING_METHOD_SFT,
                limits=pb.Limits(max_runtime_minutes=5, max_cost_usd=10),
            ),
            default_image="unused",
        )
        before = await store.create(
            owner="alice",
            request_id=None,
            spec=spec,
            dataset_sha256="0" * 64,
            dataset_size=1,
            hourly_usd=0,
            now=NOW - timedelta(hours=2),
        )
        after, changed = await store.mutate(before.id, NOW, lambda current: EVERY_FIELD)
        assert changed
        for f in fields(Change):
            if f.name != "events":
                wanted = getattr(EVERY_FIELD, f.name)
                assert getattr(before, f.name) != wanted, f.name
                assert getattr(after, f.name) == wanted, f.name

        def forget(current: object) -> Change:
            change = Change(output=None)
            change.forget_secrets()
            return change

        after, _ = await store.mutate(before.id, NOW, forget)
        assert (after.output, after.job_token_ciphertext, after.provider_key_ciphertext) == (
            None,
            None,
            None,
        )
        unchanged, changed = await store.mutate(before.id, NOW, lambda current: Change())
        assert not changed
        assert unchanged == after
    finally:
        await db.close()
