"""The watcher engine: one asyncio loop on one thread, shared by every running client.

It owns the loop, one aiohttp `ClientSession` for every probe and schema request, and the
pool of daemon threads that user callbacks run on (never the loop). Name lookups run on the
loop too (c-ares), so a resolver that hangs holds no thread and delays no other agent. The
first client to start starts it; the last one to stop closes the session and joins the
loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp.resolver import DefaultResolver, ThreadedResolver

from rpc_datasource.runtime.daemon_threads import DaemonThreadPool

logger = logging.getLogger(__name__)

ENGINE_THREAD_NAME = "rpc-health-engine"
CALLBACK_THREAD_PREFIX = "rpc-callback"
# How long a looked-up address is reused: lookups are per name, not per probe.
DNS_CACHE_TTL_S = 10
# Below the idle close of common servers (the project's runner 15 s, uvicorn's default 5 s
# and gunicorn's 2 s are the odd ones out:
# aiohttp then retries an idempotent GET once on a connection the server has just closed).
KEEPALIVE_S = 8.0
STOP_WAIT_S = 0.5

T = TypeVar("T")


def check_resolver() -> None:
    """Warn once when aiohttp would look names up on threads (aiodns is missing)."""
    if DefaultResolver is ThreadedResolver:
        logger.warning("aiodns is not installed: name lookups run on threads (pip install aiodns)")


def new_session() -> aiohttp.ClientSession:
    """A session of ours: keep-alive, no limits of its own, no proxy or netrc from the
    environment; with aiodns installed, aiohttp's default resolver looks names up on the loop
    (c-ares), and the connector caches them."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_S,
        ttl_dns_cache=DNS_CACHE_TTL_S,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        raise_for_status=False,
    )


class Engine:
    """A running event loop thread with its session and callback executor."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.callback_executor = DaemonThreadPool(CALLBACK_THREAD_PREFIX)
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=ENGINE_THREAD_NAME, daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the engine is not running"
        return self._session

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> Spawned:
        """Run `coroutine` as a task on the loop; the handle cancels it from any thread."""
        finished = threading.Event()

        async def guarded() -> None:
            try:
                await coroutine
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(guarded(), self.loop)
        return Spawned(self, future, finished)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the loop and wait for its result (never from the loop itself)."""
        if self.on_loop_thread():
            coroutine.close()
            raise RuntimeError("Engine.run() would block the event loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def stop(self) -> None:
        """Cancel what runs, close the session, end the loop; joins its thread unless on it."""
        self.callback_executor.shutdown()
        if self.on_loop_thread():
            self.loop.create_task(self._shutdown())
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        self._thread.join(STOP_WAIT_S * 2)
        if self._thread.is_alive():
            logger.warning("the engine's thread did not end within %.1f s", STOP_WAIT_S * 2)

    def _run(self) -> None:
        check_resolver()
        asyncio.set_event_loop(self.loop)
        self._session = self.loop.run_until_complete(self._open_session())
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _open_session(self) -> aiohttp.ClientSession:
        return new_session()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        if self._session is not None:
            await self._session.close()
        self.loop.stop()


class Spawned:
    """A task running on the engine, cancellable from any thread."""

    def __init__(
        self, engine: Engine, future: concurrent.futures.Future[None], finished: threading.Event
    ) -> None:
        self._engine = engine
        self._future = future
        self._finished = finished

    def cancel(self) -> None:
        """Cancel the task; off the loop, wait (briefly) until it has really ended."""
        self._future.cancel()
        if not self._engine.on_loop_thread():
            self._finished.wait(STOP_WAIT_S)


class SharedEngine:
    """Counts the engine's users: the first starts it, the last stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._users = 0

    def acquire(self) -> Engine:
        """The running engine, started if this is its first user."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine()
            self._users += 1
            return self._engine

    def release(self) -> None:
        """One user fewer; the last one out stops the engine (outside the lock)."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._engine is None:
                return
            engine, self._engine = self._engine, None
        engine.stop()

    def current(self) -> Engine | None:
        """The running engine, if any client is running."""
        with self._lock:
            return self._engine


shared_engine = SharedEngine()
