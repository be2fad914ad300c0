"""`HealthCheckClient`: the threaded API; watches one agent on the shared engine."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.state import ProbeResult
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.runtime.callbacks import OrderedCallbacks
from rpc_datasource.runtime.client_base import ClientBase
from rpc_datasource.runtime.engine import Engine, Spawned, new_session, shared_engine
from rpc_datasource.transport.probe import ProbeOutcome, probe_health

logger = logging.getLogger(__name__)


class HealthCheckClient(ClientBase):
    """Polls one agent; `on_server_down` once per outage, `on_server_recovered` once after it.

    Probes run as coroutines on the process's one engine thread; callbacks run on a small
    callback pool, in order for each client, never on the engine's loop.
    """

    def _setup_driver(self) -> None:
        self._callbacks = OrderedCallbacks(logger, self.url)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._task: Spawned | None = None

    def start(self) -> None:
        """Begin polling (idempotent; a stopped client stays stopped)."""
        with self._lock:
            if self._closed or self._engine is not None:
                return
            self._engine = shared_engine.acquire()
            self._task = self._engine.spawn(self._watcher.run())
        logger.info(
            "watching %s (%s mode) every %g s (down after %d failures, within %.1f s)",
            self.url,
            self.policy.mode,
            self.polling_interval,
            self.failure_threshold,
            self.detection_bound_s,
        )

    def stop(self) -> None:
        """Stop polling at once: the probe in flight is cancelled, no callback starts after.

        A callback already running is left to finish on its own; stop() never waits for it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            task, self._task = self._task, None
        self._callbacks.close()
        if task is not None:
            task.cancel()
            shared_engine.release()
        logger.info("stopped watching %s", self.url)

    def probe_now(self) -> ProbeResult:
        """One probe, on the calling thread, without touching the state (for diagnostics)."""

        async def probe_once() -> ProbeOutcome:
            async with new_session() as session:
                return await probe_health(session, self.endpoint)

        return asyncio.run(probe_once())[0]

    def queue_callback(
        self, what: str, callback: Callable[..., object] | None, *args: object
    ) -> None:
        """Run `callback(*args)` after this client's earlier callbacks, off the loop."""
        engine = self._engine
        if engine is not None:
            self._callbacks.submit(engine.callback_executor, what, callback, *args)

    async def _probe(self, request: ProbeRequest) -> ProbeOutcome:
        assert self._engine is not None
        return await probe_health(self._engine.session, self.endpoint, request)

    def _fire_callbacks(self, event: ProbeEvent) -> None:
        if event.went_down:
            self.queue_callback("on_server_down", self.on_server_down)
        if event.recovered:
            self.queue_callback("on_server_recovered", self.on_server_recovered)
