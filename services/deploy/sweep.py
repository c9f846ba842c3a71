"""The orphan sweep: terminates pods named as ours that no run owns.

Such a pod is a duplicate, the pod of a finished run, or one whose run this database never
recorded. Pods are matched to runs by pod id, whoever's key listed them, so accounts shared by
several users are safe.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime

from services.deploy import metrics
from services.deploy.keys import KeyRingError
from services.deploy.providers.base import Pod, Provider, ProviderError
from services.deploy.providers.registry import Providers
from services.deploy.settings import DeploySettings
from services.deploy.store import Change, Deployment, DeploymentStore

log = logging.getLogger(__name__)


class OrphanSweep:
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
        self._ours = re.compile(rf"{re.escape(settings.pod_name_prefix)}-(dep_[a-z2-7]{{26}})")

    async def run(self) -> int:
        """Terminate the orphans in every account a stored key opens; returns how many."""
        terminated = 0
        async for _, provider in self.providers.accounts():
            try:
                pods = await provider.list_pods(f"{self.settings.pod_name_prefix}-dep_")
            except (ProviderError, KeyRingError) as exc:
                log.warning("orphan sweep could not list pods", extra={"error": str(exc)})
                continue
            ours = {pod.id: match[1] for pod in pods if (match := self._ours.fullmatch(pod.name))}
            known = await self.store.known_ids(list(set(ours.values())))
            for pod in pods:
                if pod.id not in ours:
                    continue  # named like ours, but not one of our names
                d = known.get(ours[pod.id])
                if d is not None and _owns(d, pod):
                    continue
                terminated += await self._terminate(provider, pod, d)
        return terminated

    async def _terminate(self, provider: Provider, pod: Pod, d: Deployment | None) -> int:
        try:
            await provider.terminate(pod.id)
        except ProviderError as exc:
            log.warning("orphan pod not terminated", extra={"pod": pod.id, "error": exc.message})
            return 0
        log.warning("terminated an orphan pod", extra={"pod": pod.id, "pod_name": pod.name})
        metrics.ORPHANS_TERMINATED.labels(provider.name).inc()
        if d is not None:

            def note(current: Deployment) -> Change:
                change = Change()
                change.log("orphan_terminated", f"terminated pod {pod.id}, which no live run owned")
                return change

            await self.store.mutate(d.id, self.clock(), note)
        return 1


def _owns(d: Deployment, pod: Pod) -> bool:
    """Whether the run still owns the pod: its recorded pod (until confirmed gone), or, while
    the run is live and has none recorded yet, the pod being recorded right now."""
    if d.pod_id == pod.id:
        return not d.pod_released_at
    return d.pod_id is None and not d.state.terminal
