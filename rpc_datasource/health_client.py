"""`HealthCheckClient`: polls an agent's /health on the shared scheduler and fires callbacks."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rpc_common.settings import MIN_SECRET_BYTES
from rpc_common.signing import SignatureScheme
from rpc_datasource.callbacks import call_logged
from rpc_datasource.health_response import classify_health_response
from rpc_datasource.health_state import (
    Action,
    HealthState,
    HealthStateMachine,
    ProbeKind,
    ProbeResult,
)
from rpc_datasource.http import AgentRequestError, new_session, signed_get
from rpc_datasource.scheduler import ProbeScheduler, ScheduledJob, shared_scheduler
from rpc_datasource.timing import (
    default_failure_retry_interval,
    first_probe_delay,
    jittered,
    worst_case_detection,
)

if TYPE_CHECKING:
    from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger(__name__)

Callback = Callable[[], None]


@dataclass(frozen=True)
class HealthStats:
    """Counters for operators: a snapshot of one client's view of its agent."""

    state: str
    state_since: datetime
    probes: int
    failures: int
    consecutive_failures: int
    last_latency_s: float | None
    last_error: str | None
    outage_started: datetime | None
    last_outage_s: float | None
    outage_probes: int


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


class HealthCheckClient:
    """Polls one agent; `on_server_down` once per outage, `on_server_recovered` once after it."""

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
        on_schema_check: Callback | None = None,
        failure_retry_interval: float | None = None,
        jitter: float = 0.1,
        signature_scheme: SignatureScheme = "v2",
        known_schema_etag: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not auth_secret:
            raise ValueError("auth_secret must not be empty")
        _check_positive("polling_interval", polling_interval)
        _check_positive("timeout", timeout)
        if isinstance(failure_threshold, bool) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold!r}")
        if failure_retry_interval is None:
            failure_retry_interval = default_failure_retry_interval(polling_interval)
        _check_positive("failure_retry_interval", failure_retry_interval)
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        if signature_scheme not in ("v1", "v2"):
            raise ValueError(f"signature_scheme must be 'v1' or 'v2', got {signature_scheme!r}")
        if len(auth_secret.encode("utf-8")) < MIN_SECRET_BYTES:
            logger.warning("auth_secret for %s is shorter than %d bytes", url, MIN_SECRET_BYTES)
        self.url = url
        self.polling_interval = float(polling_interval)
        self.failure_threshold = int(failure_threshold)
        self.timeout = float(timeout)
        self.failure_retry_interval = float(failure_retry_interval)
        self.jitter = jitter
        self.on_server_down = on_server_down
        self.on_server_recovered = on_server_recovered
        self.on_schema_check = on_schema_check
        self._secret = auth_secret
        self._scheme: SignatureScheme = signature_scheme
        self._rng = rng or random.Random()
        self._machine = HealthStateMachine(failure_threshold, known_schema_etag)
        self._session = new_session()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._probing_thread: int | None = None
        self._job = ScheduledJob(self._probe_and_react, name=url)
        self._scheduler: ProbeScheduler | None = None
        self._closed = False
        self._stats = _MutableStats(state_since=datetime.now(UTC))

    @classmethod
    def from_settings(
        cls,
        settings: DatasourceSettings,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        **options: Any,
    ) -> HealthCheckClient:
        """A client for `settings.health_url()` with the settings' interval, threshold, timeout."""
        return cls(
            settings.health_url(),
            settings.auth_secret.get_secret_value(),
            polling_interval=settings.health_check_interval,
            failure_threshold=settings.health_check_failure_threshold,
            timeout=settings.health_check_timeout,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            signature_scheme=settings.signature_scheme,
            **options,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def detection_bound_s(self) -> float:
        """The longest an outage can go unnoticed (see `timing.worst_case_detection`)."""
        return worst_case_detection(
            self.polling_interval,
            self.failure_retry_interval,
            self.failure_threshold,
            self.timeout,
            self.jitter,
        )

    def start(self) -> None:
        """Begin polling (idempotent; a stopped client stays stopped)."""
        with self._lock:
            if self._closed or self._scheduler is not None:
                return
            self._scheduler = shared_scheduler.acquire()
            self._scheduler.schedule(self._job, first_probe_delay(self.polling_interval, self._rng))
        logger.info(
            "watching %s every %g s (down after %d failures, within %.1f s)",
            self.url,
            self.polling_interval,
            self.failure_threshold,
            self.detection_bound_s,
        )

    def stop(self) -> None:
        """Stop polling; waits for an in-flight probe at most about `timeout` (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._job.cancel()
            scheduler, self._scheduler = self._scheduler, None
        if self._probing_thread != threading.get_ident():
            self._idle.wait(self.timeout + 1.0)
        if scheduler is not None:
            shared_scheduler.release()
        self._session.close()
        logger.info("stopped watching %s", self.url)

    def stats(self) -> HealthStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return self._stats.snapshot(self._machine)

    def probe_now(self) -> ProbeResult:
        """One probe, synchronously, without touching the state machine (for diagnostics)."""
        return self._probe()[0]

    def _probe(self) -> tuple[ProbeResult, float | None]:
        try:
            reply = signed_get(
                self._session, self.url, self._secret, timeout=self.timeout, scheme=self._scheme
            )
        except AgentRequestError as error:
            return ProbeResult.failed(str(error)), None
        result = classify_health_response(
            reply.status, reply.body, reply.headers.get("Date"), datetime.now(UTC)
        )
        return result, reply.latency_s

    def _probe_and_react(self) -> None:
        with self._lock:
            if self._closed:
                return
            # Marked busy under the lock, so a stop() that follows waits for this probe.
            self._idle.clear()
            self._probing_thread = threading.get_ident()
        try:
            result, latency = self._probe()
            with self._lock:
                if self._closed:
                    return
                actions = self._machine.observe(result)
                self._stats.record(result, latency, actions, self._machine)
            self._log_outcome(result, actions)
            self._run_callbacks(actions)
        finally:
            self._schedule_next()
            self._probing_thread = None
            self._idle.set()

    def _schedule_next(self) -> None:
        with self._lock:
            if self._scheduler is not None and not self._closed:
                self._scheduler.schedule(self._job, self._next_delay())

    def _next_delay(self) -> float:
        failing = self._machine.state is not HealthState.DOWN and self._machine.consecutive_failures
        base = self.failure_retry_interval if failing else self.polling_interval
        return jittered(base, self.jitter, self._rng)

    def _log_outcome(self, result: ProbeResult, actions: Action) -> None:
        if Action.FIRE_DOWN in actions:
            logger.warning(
                "%s is down after %d failed probe(s): %s",
                self.url,
                self._machine.consecutive_failures,
                result.cause,
            )
        elif result.kind is not ProbeKind.OK:
            logger.info(
                "%s probe failed (%d in a row): %s",
                self.url,
                self._machine.consecutive_failures,
                result.cause,
            )
        if Action.FIRE_RECOVERED in actions:
            logger.warning("%s recovered", self.url)

    def _run_callbacks(self, actions: Action) -> None:
        if Action.FIRE_DOWN in actions:
            self._call("on_server_down", self.on_server_down)
        if Action.FIRE_RECOVERED in actions:
            self._call("on_server_recovered", self.on_server_recovered)
        if Action.CHECK_SCHEMA in actions and not self._call(
            "on_schema_check", self.on_schema_check
        ):
            with self._lock:
                self._machine.schema_check_failed()

    def _call(self, name: str, callback: Callback | None) -> bool:
        return call_logged(logger, f"{name} callback for {self.url}", callback)


class _MutableStats:
    """The client's counters, updated under its lock."""

    def __init__(self, state_since: datetime) -> None:
        self.state = HealthState.UNKNOWN
        self.state_since = state_since
        self.probes = 0
        self.failures = 0
        self.last_latency_s: float | None = None
        self.last_error: str | None = None
        self.outage_started: datetime | None = None
        self.outage_started_monotonic: float | None = None
        self.last_outage_s: float | None = None
        self.outage_probes = 0

    def record(
        self,
        result: ProbeResult,
        latency: float | None,
        actions: Action,
        machine: HealthStateMachine,
    ) -> None:
        now = datetime.now(UTC)
        self.probes += 1
        self.last_latency_s = latency
        if result.kind is ProbeKind.OK:
            if Action.FIRE_RECOVERED in actions and self.outage_started_monotonic is not None:
                self.last_outage_s = time.monotonic() - self.outage_started_monotonic
            self.outage_started = None
            self.outage_started_monotonic = None
        else:
            self.failures += 1
            self.last_error = result.cause
            if machine.consecutive_failures == 1:
                self.outage_started = now
                self.outage_started_monotonic = time.monotonic()
            self.outage_probes = machine.consecutive_failures
        if machine.state is not self.state:
            self.state = machine.state
            self.state_since = now

    def snapshot(self, machine: HealthStateMachine) -> HealthStats:
        return HealthStats(
            state=str(self.state),
            state_since=self.state_since,
            probes=self.probes,
            failures=self.failures,
            consecutive_failures=machine.consecutive_failures,
            last_latency_s=self.last_latency_s,
            last_error=self.last_error,
            outage_started=self.outage_started,
            last_outage_s=self.last_outage_s,
            outage_probes=self.outage_probes,
        )
