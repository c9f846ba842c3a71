"""What the provider billed, beside what we estimated.

The cost a run shows while it lives is our estimate (the pod's hourly price times its uptime),
and the limits are enforced with it. Once the pod is gone, the provider's own billing records say
what it really cost; they settle late, so a finished run's bill is read again every
`billing_check_minutes` for `billing_settle_hours`, and the run keeps both figures. Each run is
looked at once per period whatever the answer (a bill not there yet, a refusal), and a pass
reads for at most READ_BUDGET: the supervisor's own work (stopping pods) must not wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from services.deploy.providers.base import ProviderError
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.store import Change, Deployment, DeploymentStore

log = logging.getLogger(__name__)

# Providers that keep billing records we can read.
BILLED_PROVIDERS = ("runpod",)
READ_BUDGET = timedelta(seconds=20)


class Billing:
    def __init__(
        self,
        store: DeploymentStore,
        providers: Providers,
        settings: DeploySettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.providers = providers
        self.settings = settings
        self.clock = clock

    async def reconcile(self) -> int:
        """Read the bills that are due, for READ_BUDGET at most; returns how many were read
        (those left over are due on the next pass)."""
        now = self.clock()
        settle = timedelta(hours=self.settings.billing_settle_hours)
        every = timedelta(minutes=self.settings.billing_check_minutes)
        read = 0

        async def read_due() -> None:
            nonlocal read
            for provider in BILLED_PROVIDERS:
                for d in await self.store.to_bill(provider, now - settle, now - every):
                    read += await self._read(d, now)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(read_due(), READ_BUDGET.total_seconds())
        return read

    async def _read(self, d: Deployment, now: datetime) -> int:
        assert d.pod_id is not None
        try:
            # The run forgot its own copy of the key with its pod: the owner's key reads the
            # same account unless it was replaced since.
            async with self.providers.open(d.owner, d.spec.provider) as provider:
                billed = await provider.billed_usd(d.pod_id, d.created_at)
        except ProviderError as exc:
            log.info("bill not read", extra={"deployment": d.id, "error": exc.message})
            billed = None

        def record(current: Deployment) -> Change:
            # Looked at now, whatever was found: the next look is a period away.
            change = Change(billed_at=now)
            if billed is None:
                return change
            change.billed_usd = billed
            if current.billed_usd is None or abs(billed - current.billed_usd) >= 0.005:
                change.log(
                    "billed",
                    f"{current.spec.provider} billed ${billed:.2f} for pod {current.pod_id} "
                    f"(estimated ${current.cost_usd:.2f})",
                )
            return change

        await self.store.mutate(d.id, now, record)
        return 0 if billed is None else 1
