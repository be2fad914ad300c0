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
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import aiohttp

from rpc_common.signing import SignatureScheme
from rpc_datasource.daemon_threads import DaemonThreadPool
from rpc_datasource.engine import CALLBACK_THREAD_PREFIX, new_session
from rpc_datasource.events import ProbeEvent, ProbeHook
from rpc_datasource.policy import ProbeMode, ProbePolicy
from rpc_datasource.probe import ProbeOutcome, probe_health
from rpc_datasource.watch_mode import ProbeRequest
from rpc_datasource.watched_agent import WatchedAgent

logger = logging.getLogger(__name__)

AsyncCallback = Callable[[], Awaitable[None]] | Callable[[], None]


class AsyncHealthCheckClient(WatchedAgent):
    """Watches one agent on the running loop; use `async with` or `start()` / `stop()`."""

    def __init__(
        self,
        url: str,
        auth_secret: str,
        polling_interval: float = 30.0,
        failure_threshold: int = 3,
        timeout: float = 5.0,
        on_server_down: AsyncCallback | None = None,
        on_server_recovered: AsyncCallback | None = None,
        *,
        failure_retry_interval: float | None = None,
        jitter: float = 0.1,
        recovery_threshold: int = 1,
        mode: ProbeMode = "poll",
        watch_wait: float = 25.0,
        signature_scheme: SignatureScheme = "v2",
        hooks: Sequence[ProbeHook] = (),
        name: str | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        policy = ProbePolicy(
            polling_interval=polling_interval,
            failure_threshold=failure_threshold,
            timeout=timeout,
            failure_retry_interval=failure_retry_interval,
            jitter=jitter,
            recovery_threshold=recovery_threshold,
            mode=mode,
            watch_wait=watch_wait,
        )
        super().__init__(
            url,
            auth_secret,
            policy,
            signature_scheme=signature_scheme,
            hooks=hooks,
            rng=rng,
            name=name,
        )
        self.on_server_down = on_server_down
        self.on_server_recovered = on_server_recovered
        self._given_session = session
        self._session: aiohttp.ClientSession | None = None
        self._pending: asyncio.Queue[tuple[str, AsyncCallback]] = asyncio.Queue()
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
                    await callback()
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
