"""`ProbeEvent`: what one probe saw and what it changed, handed to every hook (pure).

Logging, the counters of `stats()`, the user's callbacks and metrics are all hooks: equal
peers that each receive the same frozen event, in the order they were given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from rpc_datasource.health_state import Action, FailureReason, HealthState, ProbeResult

logger = logging.getLogger(__name__)


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


ProbeHook = Callable[[ProbeEvent], None]

_global_hooks: tuple[ProbeHook, ...] = ()


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


def deliver(event: ProbeEvent, hooks: Iterable[ProbeHook]) -> None:
    """Hand `event` to each hook, then to the process-wide ones; one that raises is logged."""
    for group in (hooks, _global_hooks):
        for hook in group:
            try:
                hook(event)
            except Exception:
                logger.exception("probe hook %r raised on %s; carrying on", hook, event.client)
            except (SystemExit, KeyboardInterrupt) as error:
                logger.error(
                    "probe hook %r raised %s on %s: contained, carrying on",
                    hook,
                    type(error).__name__,
                    event.client,
                    exc_info=True,
                )
