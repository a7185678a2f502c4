"""A per-key work queue: events only mark a key dirty; one worker per key reconciles until clean."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)


class WorkQueue:
    """Many events for one ModelDeployment collapse into one reconcile at a time (as in
    controller-runtime); a reconcile that raises is retried with growing delays."""

    def __init__(self, work: Callable[[Hashable], Awaitable[None]]) -> None:
        self._work = work
        self._dirty: set[Hashable] = set()
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._retries: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}

    def kick(self, key: Hashable) -> None:
        self._dirty.add(key)
        if key not in self._workers:
            self._workers[key] = asyncio.get_running_loop().create_task(self._drain(key))

    async def _drain(self, key: Hashable) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                try:
                    await self._work(key)
                except Exception:
                    log.exception("reconcile of %s failed", key)
                    self._retry_later(key)
                else:
                    self._failures.pop(key, None)
        finally:
            self._workers.pop(key, None)

    def _retry_later(self, key: Hashable) -> None:
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        delay = RETRY_DELAYS[min(count, len(RETRY_DELAYS) - 1)]
        log.info("retrying %s in %.0f s", key, delay)
        if old := self._retries.pop(key, None):
            old.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self.kick, key)

    def kick_later(self, key: Hashable, delay: float) -> None:
        """Reconcile `key` again after `delay` seconds (a retry's back-off), once."""
        if old := self._retries.pop(key, None):
            old.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self.kick, key)

    async def idle(self) -> None:
        """Wait until no worker runs (for tests and a clean shutdown)."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
