"""`HealthStats`: one client's counters for operators, kept by a hook on its probe events."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.state import HealthState


@dataclass(frozen=True)
class HealthStats:
    """A snapshot of one client's view of its agent."""

    state: str
    state_since: datetime
    probes: int
    failures: int
    consecutive_failures: int
    last_latency_s: float | None
    last_error: str | None
    last_reason: str | None
    outage_started: datetime | None
    last_outage_s: float | None
    # The readiness checks the agent's last answer named failing (degraded or not ready).
    failing_checks: tuple[str, ...] = ()


class StatsRecorder:
    """A probe hook that keeps the counters; `snapshot()` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = HealthState.UNKNOWN
        self._state_since = datetime.now(UTC)
        self._probes = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._last_latency_s: float | None = None
        self._last_error: str | None = None
        self._last_reason: str | None = None
        self._outage_started: datetime | None = None
        self._outage_started_monotonic: float | None = None
        self._last_outage_s: float | None = None
        self._failing_checks: tuple[str, ...] = ()

    def __call__(self, event: ProbeEvent) -> None:
        with self._lock:
            self._probes += 1
            self._last_latency_s = event.latency_s
            self._consecutive_failures = event.consecutive_failures
            self._failing_checks = event.failing_checks
            if event.result.succeeded:
                if event.recovered and self._outage_started_monotonic is not None:
                    self._last_outage_s = time.monotonic() - self._outage_started_monotonic
                if event.state_after is not HealthState.DOWN:
                    self._outage_started = None
                    self._outage_started_monotonic = None
            else:
                self._failures += 1
                self._last_error = event.result.cause
                self._last_reason = event.reason
                if event.consecutive_failures == 1 and event.state_before is not HealthState.DOWN:
                    self._outage_started = datetime.now(UTC)
                    self._outage_started_monotonic = time.monotonic()
            if event.state_after is not self._state:
                self._state = event.state_after
                self._state_since = datetime.now(UTC)

    def snapshot(self) -> HealthStats:
        with self._lock:
            return HealthStats(
                state=str(self._state),
                state_since=self._state_since,
                probes=self._probes,
                failures=self._failures,
                consecutive_failures=self._consecutive_failures,
                last_latency_s=self._last_latency_s,
                last_error=self._last_error,
                last_reason=self._last_reason,
                outage_started=self._outage_started,
                last_outage_s=self._last_outage_s,
                failing_checks=self._failing_checks,
            )
