"""The floor for `master_scale`: a bare aiohttp polling loop, with no engine around it.

One `ClientSession` (pooled, 8 s keep-alive as the engine's), one coroutine per agent on a
loop of its own thread: sleep until due, a freshly signed GET, read the body, the next due
time one jittered interval (±10 %) after this one's start, as the engine's. No policy,
state machine, events, hooks or grid: only what any poller must do. Lateness is measured
as the engine's: the loop's time when the coroutine wakes, less its due time.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import aiohttp

from rpc_common.signing import signed_headers

HEALTH_PATH = "/forest/health"
JITTER = 0.1
KEEPALIVE_S = 8.0


class BareLoop:
    """One asyncio loop on one thread, one coroutine per agent."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.failures = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bare-loop", daemon=True)
        self.tasks: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None

    def start(self, cell: Any) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(cell), self.loop).result(60.0)

    async def _start(self, cell: Any) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=cell.timeout),
        )
        targets = [(url, True) for url in cell.healthy_urls]
        targets += [(url, False) for url in cell.hung_urls]
        for url, healthy in targets:
            poll = self._poll(url + HEALTH_PATH, cell.secret, cell.interval, healthy)
            self.tasks.append(asyncio.create_task(poll))

    async def _poll(self, url: str, secret: str, interval: float, healthy: bool) -> None:
        loop = asyncio.get_running_loop()
        session = self.session
        assert session is not None
        due = loop.time() + random.uniform(0.0, interval)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            started = loop.time()
            if healthy:
                self.lateness.append(started - due)
            try:
                headers = signed_headers(secret, target=HEALTH_PATH)
                async with session.get(url, headers=headers, allow_redirects=False) as reply:
                    await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                self.failures += healthy
            due = max(started + interval * (1.0 + random.uniform(-JITTER, JITTER)), loop.time())

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)

    async def _stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def extra(self) -> dict[str, Any]:
        return {"healthy_failures": self.failures}

    def profile_on_loop(self, action: str) -> None:
        raise NotImplementedError("only the current engine is profiled")
