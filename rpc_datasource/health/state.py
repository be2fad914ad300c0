"""The failure/recovery state machine of one watched agent (pure: no threads, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Flag, StrEnum, auto


class ProbeKind(StrEnum):
    """What one health probe saw."""

    OK = "ok"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"


class FailureReason(StrEnum):
    """Why a probe failed, by category: what logs, `stats()` and metrics group by."""

    REFUSED = "refused"
    DNS = "dns"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    BAD_BODY = "bad_body"
    UNAUTHORIZED = "unauthorized"
    NOT_READY = "not_ready"  # 503 "unavailable": the agent's own readiness checks fail
    SHUTTING_DOWN = "shutting_down"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome: for OK the agent's identity, otherwise the reason and cause."""

    kind: ProbeKind
    instance_id: str | None = None
    schema_etag: str | None = None
    cause: str = ""
    reason: FailureReason | None = None
    # The readiness checks the agent reports failing: on a success they mean "degraded", on
    # a `not_ready` failure they are why.
    failing_checks: tuple[str, ...] = ()

    @classmethod
    def ok(
        cls,
        instance_id: str,
        schema_etag: str | None = None,
        failing_checks: tuple[str, ...] = (),
    ) -> ProbeResult:
        return cls(
            ProbeKind.OK,
            instance_id=instance_id,
            schema_etag=schema_etag,
            failing_checks=failing_checks,
        )

    @classmethod
    def failed(cls, reason: FailureReason, cause: str) -> ProbeResult:
        return cls(ProbeKind.FAILED, cause=cause, reason=reason)

    @classmethod
    def shutting_down(cls, cause: str = "agent is shutting down") -> ProbeResult:
        return cls(ProbeKind.SHUTTING_DOWN, cause=cause, reason=FailureReason.SHUTTING_DOWN)

    @property
    def succeeded(self) -> bool:
        return self.kind is ProbeKind.OK

    @property
    def degraded(self) -> bool:
        """Serving, with some non-critical readiness checks failing."""
        return self.succeeded and bool(self.failing_checks)


class Action(Flag):
    """What an observation calls for; several may be asked at once."""

    NONE = 0
    FIRE_DOWN = auto()
    FIRE_RECOVERED = auto()
    # A success from another instance_id than the last one seen: the agent restarted.
    NEW_INSTANCE = auto()


class HealthState(StrEnum):
    """Whether the agent is thought up, down, or not yet known."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class HealthStateMachine:
    """Counts consecutive outcomes and says when to fire down or recovered.

    Down fires once per outage: on the `failure_threshold`-th consecutive failure, or at once
    on an explicit shutting_down. Recovered fires once `recovery_threshold` consecutive
    successes follow it (HAProxy's `rise`; 1 by default, the first success).
    """

    def __init__(self, failure_threshold: int, recovery_threshold: int = 1) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if recovery_threshold < 1:
            raise ValueError("recovery_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.recovery_threshold = recovery_threshold
        self.state = HealthState.UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.instance_id: str | None = None

    @property
    def in_transition(self) -> bool:
        """Failing but not yet down, or succeeding but not yet recovered: re-probe sooner."""
        if self.state is HealthState.DOWN:
            return self.consecutive_successes > 0
        return self.consecutive_failures > 0

    def observe(self, result: ProbeResult) -> Action:
        """Take one probe outcome; the actions it calls for."""
        if result.kind is ProbeKind.OK:
            return self._observe_success(result)
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        if self.state is HealthState.DOWN:
            return Action.NONE
        if (
            result.kind is ProbeKind.SHUTTING_DOWN
            or self.consecutive_failures >= self.failure_threshold
        ):
            self.state = HealthState.DOWN
            return Action.FIRE_DOWN
        return Action.NONE

    def _observe_success(self, result: ProbeResult) -> Action:
        actions = Action.NONE
        if self.instance_id is not None and result.instance_id != self.instance_id:
            actions |= Action.NEW_INSTANCE
        self.instance_id = result.instance_id
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self.state is HealthState.DOWN:
            if self.consecutive_successes < self.recovery_threshold:
                return actions
            actions |= Action.FIRE_RECOVERED
        self.state = HealthState.UP
        return actions
