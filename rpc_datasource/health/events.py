"""`ProbeEvent` and `SchemaEvent`: what one probe or one schema read saw, handed to hooks.

Logging, the counters of `stats()`, the user's callbacks and metrics are all hooks: equal
peers that each receive the same frozen event, in the order they were given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TypeVar

from rpc_common.log_limit import LogRateLimiter
from rpc_datasource.health.state import Action, FailureReason, HealthState, ProbeResult

logger = logging.getLogger(__name__)

# A hook that takes longer than this on the loop is named in a (rate-limited) WARNING.
SLOW_HOOK_S = 0.1
_slow_hooks_logged = LogRateLimiter(burst=3, per_second=1 / 60)


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
Event = TypeVar("Event", ProbeEvent, SchemaEvent)

_global_hooks: tuple[ProbeHook, ...] = ()
_global_schema_hooks: tuple[SchemaHook, ...] = ()


def set_probe_hooks(hooks: Iterable[ProbeHook]) -> None:
    """Hooks that every client in the process calls after each probe, after its own hooks.

    Hooks run on the engine's event loop: they must be quick and must not block (a
    Prometheus counter, a log line); anything slower belongs in a callback.
    """
    global _global_hooks
    _global_hooks = tuple(hooks)


def get_probe_hooks() -> tuple[ProbeHook, ...]:
    """The process-wide hooks set by `set_probe_hooks`."""
    return _global_hooks


def set_schema_hooks(hooks: Iterable[SchemaHook]) -> None:
    """Hooks that every datasource in the process calls after each schema read (on its loop)."""
    global _global_schema_hooks
    _global_schema_hooks = tuple(hooks)


def get_schema_hooks() -> tuple[SchemaHook, ...]:
    """The process-wide hooks set by `set_schema_hooks`."""
    return _global_schema_hooks


def deliver(event: ProbeEvent, hooks: Iterable[ProbeHook]) -> None:
    """Hand `event` to each hook, then to the process-wide ones; one that raises is logged."""
    _deliver(event, (hooks, _global_hooks))


def deliver_schema(event: SchemaEvent, hooks: Iterable[SchemaHook]) -> None:
    """Hand `event` to each hook, then to the process-wide ones; one that raises is logged."""
    _deliver(event, (hooks, _global_schema_hooks))


def _deliver(event: Event, groups: Iterable[Iterable[Callable[[Event], None]]]) -> None:
    for group in groups:
        for hook in group:
            started = time.perf_counter()
            try:
                hook(event)
            except Exception:
                logger.exception(
                    "%s hook %r raised on %s; carrying on", _kind(event), hook, event.client
                )
            except (SystemExit, KeyboardInterrupt) as error:
                logger.error(
                    "%s hook %r raised %s on %s: contained, carrying on",
                    _kind(event),
                    hook,
                    type(error).__name__,
                    event.client,
                    exc_info=True,
                )
            _warn_if_slow(hook, time.perf_counter() - started, event)


def _warn_if_slow(
    hook: Callable[..., None], took_s: float, event: ProbeEvent | SchemaEvent
) -> None:
    """A hook that held the loop past `SLOW_HOOK_S` delayed every agent's probes: say which."""
    if took_s <= SLOW_HOOK_S:
        return
    dropped = _slow_hooks_logged.admit()
    if dropped is not None:
        logger.warning(
            "%s hook %r blocked the event loop for %.0f ms on %s, delaying every agent's "
            "probes: hooks must be quick (slow work belongs in a callback)%s",
            _kind(event),
            hook,
            took_s * 1000,
            event.client,
            f" ({dropped} more slow hook calls not logged)" if dropped else "",
        )


def _kind(event: ProbeEvent | SchemaEvent) -> str:
    return "probe" if isinstance(event, ProbeEvent) else "schema"
