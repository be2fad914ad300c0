"""`ProbeEvent` and `SchemaEvent`: what one probe or one schema read saw, handed to hooks.

Logging, the counters of `stats()`, the user's callbacks and metrics are all hooks: equal
peers that each receive the same frozen event, in the order they were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from rpc_common.hooks import Hooks
from rpc_datasource.health.state import Action, FailureReason, HealthState, ProbeResult


@dataclass(frozen=True)
class ProbeEvent:
    """One probe of one client: its outcome, timing, and the state change it caused."""

    client: str
    result: ProbeResult
    latency_s: float | None
    lateness_s: float
    state_before: HealthState
    state_after: HealthState
    consecutive_failures: int
    actions: Action

    @property
    def reason(self) -> FailureReason | None:
        return self.result.reason

    @property
    def failing_checks(self) -> tuple[str, ...]:
        """The agent's readiness checks its answer named failing (degraded, or not ready)."""
        return self.result.failing_checks

    # Computed once per event: every hook asks, and Flag membership is slow.
    @cached_property
    def went_down(self) -> bool:
        return Action.FIRE_DOWN in self.actions

    @cached_property
    def recovered(self) -> bool:
        return Action.FIRE_RECOVERED in self.actions

    @cached_property
    def restarted(self) -> bool:
        return Action.NEW_INSTANCE in self.actions


class SchemaOutcome(StrEnum):
    """How one read of the agent's schema ended."""

    LOADED = "loaded"  # the first read, when the datasource is built
    RELOADED = "reloaded"  # a new ETag and new content: swapped in, `on_schema_change` called
    UNCHANGED = "unchanged"  # a new ETag, the same content
    NOT_MODIFIED = "not_modified"  # 304: the ETag already held
    FAILED = "failed"


@dataclass(frozen=True)
class SchemaEvent:
    """One read of one datasource's schema: its outcome and the ETag held after it."""

    client: str
    outcome: SchemaOutcome
    etag: str | None
    change: str | None = None  # for RELOADED: what changed, in words
    error: str | None = None  # for FAILED: the cause


ProbeHook = Callable[[ProbeEvent], None]
SchemaHook = Callable[[SchemaEvent], None]

probe_hooks: Hooks[ProbeEvent] = Hooks(
    "probe", "blocked the event loop, delaying every agent's probes"
)
schema_hooks: Hooks[SchemaEvent] = Hooks(
    "schema", "blocked the event loop, delaying every agent's probes"
)


def set_probe_hooks(hooks: Iterable[ProbeHook]) -> None:
    """Hooks that every client in the process calls after each probe, after its own hooks.

    Hooks run on the engine's event loop: they must be quick and must not block (a
    Prometheus counter, a log line); anything slower belongs in a callback.
    """
    probe_hooks.replace(hooks)


def get_probe_hooks() -> tuple[ProbeHook, ...]:
    """The process-wide hooks set by `set_probe_hooks`."""
    return probe_hooks.registered


def set_schema_hooks(hooks: Iterable[SchemaHook]) -> None:
    """Hooks that every datasource in the process calls after each schema read (on its loop)."""
    schema_hooks.replace(hooks)


def get_schema_hooks() -> tuple[SchemaHook, ...]:
    """The process-wide hooks set by `set_schema_hooks`."""
    return schema_hooks.registered
