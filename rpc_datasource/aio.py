"""`AsyncHealthCheckClient`: the asyncio way in, for masters that are asyncio apps.

It runs the same `HealthWatcher` coroutine as the threaded client, on the application's own
running loop instead of the engine thread, with an aiohttp session of its own or the one the
application passes in. Callbacks may be plain functions (run on a daemon thread of the
client's own, never the loop's default executor, so a blocked one neither slows the
application's loop nor holds its exit) or coroutine functions (awaited on the loop); either
way they run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, cast

import aiohttp

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.runtime.client_base import ClientBase
from rpc_datasource.runtime.daemon_threads import DaemonThreadPool
from rpc_datasource.runtime.engine import CALLBACK_THREAD_PREFIX, new_session
from rpc_datasource.transport.probe import ProbeOutcome, probe_health

logger = logging.getLogger(__name__)


class AsyncHealthCheckClient(ClientBase):
    """Watches one agent on the running loop; use `async with` or `start()` / `stop()`."""

    def __init__(
        self, *args: Any, session: aiohttp.ClientSession | None = None, **options: Any
    ) -> None:
        """The arguments of `HealthCheckClient`; `session` is an aiohttp session of the
        application's to probe with (else the client makes and closes its own)."""
        self._given_session = session
        super().__init__(*args, **options)

    def _setup_driver(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._pending: asyncio.Queue[tuple[str, Callable[[], object]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._callback_threads = DaemonThreadPool(CALLBACK_THREAD_PREFIX)

    async def start(self) -> None:
        """Begin watching on the running loop (idempotent; a stopped client stays stopped)."""
        if self._closed or self._tasks:
            return
        self._session = self._given_session or new_session()
        self._tasks = [
            asyncio.create_task(self._watcher.run(), name=f"rpc-health {self.url}"),
            asyncio.create_task(self._run_callbacks(), name=f"rpc-callbacks {self.url}"),
        ]

    async def stop(self) -> None:
        """Cancel the probe in flight and the callback queue; close our own session."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._callback_threads.shutdown()
        if self._session is not None and self._given_session is None:
            await self._session.close()

    async def __aenter__(self) -> AsyncHealthCheckClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _probe(self, request: ProbeRequest) -> ProbeOutcome:
        assert self._session is not None
        return await probe_health(self._session, self.endpoint, request)

    def _fire_callbacks(self, event: ProbeEvent) -> None:
        if event.went_down and self.on_server_down is not None:
            self._pending.put_nowait(("on_server_down", self.on_server_down))
        if event.recovered and self.on_server_recovered is not None:
            self._pending.put_nowait(("on_server_recovered", self.on_server_recovered))

    async def _run_callbacks(self) -> None:
        while True:
            what, callback = await self._pending.get()
            try:
                if inspect.iscoroutinefunction(callback):
                    await cast(Awaitable[object], callback())
                else:
                    await asyncio.wrap_future(self._callback_threads.submit(callback))
            except Exception:
                logger.exception("%s callback for %s raised; carrying on", what, self.url)
            except (SystemExit, KeyboardInterrupt) as error:
                # On the application's own loop these mean "stop": logged, then let through.
                logger.error(
                    "%s callback for %s raised %s: passing it on to the application",
                    what,
                    self.url,
                    type(error).__name__,
                )
                raise
