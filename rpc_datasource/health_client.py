"""`HealthCheckClient`: the threaded API; watches one agent on the shared engine."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rpc_common.signing import SignatureScheme
from rpc_datasource.callbacks import OrderedCallbacks
from rpc_datasource.endpoint import AgentEndpoint
from rpc_datasource.engine import Engine, Spawned, new_session, shared_engine
from rpc_datasource.events import ProbeEvent, ProbeHook
from rpc_datasource.health_state import ProbeResult
from rpc_datasource.policy import ProbeMode, ProbePolicy
from rpc_datasource.probe import ProbeOutcome, probe_health
from rpc_datasource.watch_mode import ProbeRequest
from rpc_datasource.watched_agent import WatchedAgent

if TYPE_CHECKING:
    from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger(__name__)

Callback = Callable[[], None]


class HealthCheckClient(WatchedAgent):
    """Polls one agent; `on_server_down` once per outage, `on_server_recovered` once after it.

    Probes run as coroutines on the process's one engine thread; callbacks run on a small
    callback pool, in order for each client, never on the engine's loop.
    """

    def __init__(
        self,
        url: str,
        auth_secret: str,
        polling_interval: float = 30.0,
        failure_threshold: int = 3,
        timeout: float = 5.0,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        *,
        failure_retry_interval: float | None = None,
        jitter: float = 0.1,
        recovery_threshold: int = 1,
        mode: ProbeMode = "poll",
        watch_wait: float = 25.0,
        signature_scheme: SignatureScheme = "v2",
        hooks: Sequence[ProbeHook] = (),
        name: str | None = None,
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
        self._callbacks = OrderedCallbacks(logger, url)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._task: Spawned | None = None

    @classmethod
    def from_settings(
        cls,
        settings: DatasourceSettings,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        **options: Any,
    ) -> HealthCheckClient:
        """A client for the agent and with the probe settings that `settings` describe."""
        return cls(
            AgentEndpoint.from_settings(settings).health_url,
            settings.auth_secret.get_secret_value(),
            polling_interval=settings.health_check_interval,
            failure_threshold=settings.health_check_failure_threshold,
            timeout=settings.health_check_timeout,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            recovery_threshold=settings.health_check_recovery_threshold,
            mode=settings.health_check_mode,
            watch_wait=settings.health_check_watch_wait,
            signature_scheme=settings.signature_scheme,
            **options,
        )

    @property
    def polling_interval(self) -> float:
        return self.policy.polling_interval

    @property
    def failure_threshold(self) -> int:
        return self.policy.failure_threshold

    @property
    def timeout(self) -> float:
        return self.policy.timeout

    @property
    def failure_retry_interval(self) -> float:
        return self.policy.retry_interval

    @property
    def jitter(self) -> float:
        return self.policy.jitter

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
