"""Wakes the watchers of a deployment when it changes in this process; watchers also poll, so
a change made by another replica reaches them too, a moment later."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict


class Changes:
    def __init__(self) -> None:
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, deployment_id: str) -> None:
        for event in self._events.get(deployment_id, ()):
            event.set()

    async def wait(self, deployment_id: str, seconds: float) -> None:
        """Until the deployment changes or `seconds` pass, whichever is first."""
        event = asyncio.Event()
        self._events[deployment_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            self._events[deployment_id].discard(event)
            if not self._events[deployment_id]:
                del self._events[deployment_id]
