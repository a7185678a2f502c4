"""The work queue: a burst of events is one reconcile at a time, and failures are retried."""

from __future__ import annotations

import asyncio

from lorafuse.operator import workqueue
from lorafuse.operator.workqueue import WorkQueue


def test_a_burst_of_events_collapses_into_at_most_two_runs():
    calls = []

    async def work(key):
        calls.append(key)
        await asyncio.sleep(0.05)

    async def scenario():
        queue = WorkQueue(work)
        for _ in range(10):
            queue.kick("a")
            await asyncio.sleep(0)
        await queue.idle()

    asyncio.run(scenario())
    assert calls == ["a", "a"]


def test_keys_are_worked_on_concurrently():
    running = set()
    overlap = []

    async def work(key):
        running.add(key)
        await asyncio.sleep(0.05)
        overlap.append(len(running))
        running.discard(key)

    async def scenario():
        queue = WorkQueue(work)
        queue.kick("a")
        queue.kick("b")
        await queue.idle()

    asyncio.run(scenario())
    assert max(overlap) == 2


def test_a_failed_reconcile_is_retried(monkeypatch):
    monkeypatch.setattr(workqueue, "RETRY_DELAYS", (0.01,))
    calls = []

    async def work(key):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("conflict")

    async def scenario():
        queue = WorkQueue(work)
        queue.kick("a")
        await queue.idle()
        await asyncio.sleep(0.1)
        await queue.idle()

    asyncio.run(scenario())
    assert calls == ["a", "a"]
