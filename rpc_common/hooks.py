"""`Hooks`: one process-wide list of hooks for one kind of event, and the one way to call them.

Logging, counters, metrics and the user's own functions are all hooks: equal peers that each
receive the same frozen event, in order. A hook that raises anything (even `SystemExit`) is
logged and the others still run; one slower than `SLOW_HOOK_S` is named in a rate-limited
WARNING, since hooks run where the event happened (an event loop, a request thread).
Registering and removing are thread-safe; delivering reads one snapshot, without a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from rpc_common.log_limit import LogRateLimiter

logger = logging.getLogger(__name__)

# A hook that takes longer than this is named in a (rate-limited) WARNING.
SLOW_HOOK_S = 0.1

E = TypeVar("E")


class Hooks(Generic[E]):
    """The process-wide hooks of one kind of event (`kind` names it in log lines); a slow
    hook's WARNING says what it delayed (`slow_effect`)."""

    def __init__(self, kind: str, slow_effect: str) -> None:
        self.kind = kind
        self.slow_effect = slow_effect
        self._hooks: tuple[Callable[[E], None], ...] = ()
        self._lock = threading.Lock()
        self._slow_logged = LogRateLimiter(burst=3, per_second=1 / 60)

    def register(self, hook: Callable[[E], None]) -> None:
        """Call `hook` with every event from now on, after the hooks registered before it."""
        with self._lock:
            self._hooks = (*self._hooks, hook)

    def remove(self, hook: Callable[[E], None]) -> None:
        """Stop calling `hook` (nothing if it was not registered)."""
        with self._lock:
            self._hooks = tuple(known for known in self._hooks if known != hook)

    def replace(self, hooks: Iterable[Callable[[E], None]]) -> None:
        """Call exactly `hooks` from now on."""
        with self._lock:
            self._hooks = tuple(hooks)

    @property
    def registered(self) -> tuple[Callable[[E], None], ...]:
        return self._hooks

    def deliver(self, event: E, about: str, local: Iterable[Callable[[E], None]] = ()) -> None:
        """Hand `event` (on `about`, for log lines) to the `local` hooks, then to the
        process-wide ones; each one that raises is logged, and the rest still run."""
        for hooks in (local, self._hooks):
            for hook in hooks:
                started = time.perf_counter()
                try:
                    hook(event)
                except Exception:
                    logger.exception("%s hook %r raised on %s; carrying on", self.kind, hook, about)
                except (SystemExit, KeyboardInterrupt) as error:
                    logger.error(
                        "%s hook %r raised %s on %s: contained, carrying on",
                        self.kind,
                        hook,
                        type(error).__name__,
                        about,
                        exc_info=True,
                    )
                self._warn_if_slow(hook, time.perf_counter() - started, about)

    def _warn_if_slow(self, hook: Callable[[E], None], took_s: float, about: str) -> None:
        if took_s <= SLOW_HOOK_S:
            return
        dropped = self._slow_logged.admit()
        if dropped is not None:
            logger.warning(
                "%s hook %r took %.0f ms on %s: it %s; hooks must be quick (slow work "
                "belongs in a callback)%s",
                self.kind,
                hook,
                took_s * 1000,
                about,
                self.slow_effect,
                f" ({dropped} more slow hook calls not logged)" if dropped else "",
            )
