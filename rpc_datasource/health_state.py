"""The failure/recovery state machine of one watched agent (pure: no threads, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Flag, StrEnum, auto


class ProbeKind(StrEnum):
    """What one health probe saw."""

    OK = "ok"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome: for OK the agent's identity, otherwise the cause."""

    kind: ProbeKind
    instance_id: str | None = None
    schema_etag: str | None = None
    cause: str = ""

    @classmethod
    def ok(cls, instance_id: str, schema_etag: str | None = None) -> ProbeResult:
        return cls(ProbeKind.OK, instance_id=instance_id, schema_etag=schema_etag)

    @classmethod
    def failed(cls, cause: str) -> ProbeResult:
        return cls(ProbeKind.FAILED, cause=cause)

    @classmethod
    def shutting_down(cls, cause: str = "agent is shutting down") -> ProbeResult:
        return cls(ProbeKind.SHUTTING_DOWN, cause=cause)


class Action(Flag):
    """What the caller must do after an observation; several may be asked at once."""

    NONE = 0
    FIRE_DOWN = auto()
    FIRE_RECOVERED = auto()
    CHECK_SCHEMA = auto()


class HealthState(StrEnum):
    """Whether the agent is thought up, down, or not yet known."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class HealthStateMachine:
    """Counts consecutive failures and says when to fire down, recovered, or check the schema.

    Down fires once per outage: on the `failure_threshold`-th consecutive failure, or at once
    on an explicit shutting_down. Recovered fires on the first success after that. Any success
    that shows a new instance_id or schema_etag asks for a schema check.
    """

    def __init__(self, failure_threshold: int, known_schema_etag: str | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.state = HealthState.UNKNOWN
        self.consecutive_failures = 0
        self.instance_id: str | None = None
        self.schema_etag = known_schema_etag
        self._schema_check_pending = False

    def observe(self, result: ProbeResult) -> Action:
        """Take one probe outcome; the actions it calls for."""
        if result.kind is ProbeKind.OK:
            return self._observe_success(result)
        self.consecutive_failures += 1
        if self.state is HealthState.DOWN:
            return Action.NONE
        if (
            result.kind is ProbeKind.SHUTTING_DOWN
            or self.consecutive_failures >= self.failure_threshold
        ):
            self.state = HealthState.DOWN
            return Action.FIRE_DOWN
        return Action.NONE

    def schema_check_failed(self) -> None:
        """The asked-for schema check could not be done: ask again at the next success."""
        self._schema_check_pending = True

    def _observe_success(self, result: ProbeResult) -> Action:
        actions = Action.NONE
        if self.state is HealthState.DOWN:
            actions |= Action.FIRE_RECOVERED | Action.CHECK_SCHEMA
        restarted = self.instance_id is not None and result.instance_id != self.instance_id
        etag_changed = (
            self.schema_etag is not None
            and result.schema_etag is not None
            and result.schema_etag != self.schema_etag
        )
        if restarted or etag_changed or self._schema_check_pending:
            actions |= Action.CHECK_SCHEMA
        self.instance_id = result.instance_id
        if result.schema_etag is not None:
            self.schema_etag = result.schema_etag
        self.state = HealthState.UP
        self.consecutive_failures = 0
        self._schema_check_pending = False
        return actions
