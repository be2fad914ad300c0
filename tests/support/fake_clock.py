"""A fake clock for `HealthWatcher`: time moves only when a test advances it."""

from __future__ import annotations

import asyncio
import heapq
import itertools

SETTLE_ROUNDS = 20


class FakeClock:
    """`now()` and `sleep()` on fake seconds; `advance()` wakes sleepers in deadline order."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        await wake

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, letting every task woken on the way run."""
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, wake = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not wake.done():
                wake.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle() -> None:
    """Let ready tasks run until they wait on the clock (or anything else) again."""
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)
