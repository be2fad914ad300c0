"""Held health requests ("watch"): wait for the agent's state to change, bounded in number."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable


class BadWait(ValueError):
    """A `wait` query value that is not a finite number of seconds, 0 or more."""


# ASCII decimal seconds, e.g. 25, 0.5, .5, 1e-3: no sign, no spaces, no `_`, no other digits.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_wait(value: str, cap: float) -> float:
    """Seconds to hold, capped at `cap`; `BadWait` for anything but a finite decimal >= 0."""
    if not _DECIMAL.fullmatch(value):
        raise BadWait("wait must be a finite decimal number of seconds, 0 or more")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise BadWait("wait must be a finite number of seconds, 0 or more")
    return min(seconds, cap)


def health_etag(status: str, instance_id: str, schema_etag: str, checks: str = "") -> str:
    """A token of the health state, quoted as an ETag: it changes when the status, the
    instance, the schema or any readiness check's status does."""
    state = f"{status}\n{instance_id}\n{schema_etag}" + (f"\n{checks}" if checks else "")
    digest = hashlib.sha256(state.encode()).hexdigest()
    return f'"{digest[:32]}"'


class HeldRequests:
    """Holds at most `max_watchers` requests, in threads or coroutines, until `notify()` or
    their wait runs out."""

    def __init__(self, max_watchers: int) -> None:
        self.max_watchers = max_watchers
        # Set once a server's glue (a gunicorn hook, the waitress recipe) gave its share.
        self.capped_by_server = False
        self._changed = threading.Condition()
        self._generation = 0
        self._held = 0
        self._wakers: set[Callable[[], None]] = set()

    def cap(self, most: int) -> None:
        """Hold at most `most` requests from now on (fewer than the setting allows): the
        share of a threaded server's request threads that its glue allows."""
        with self._changed:
            self.max_watchers = min(self.max_watchers, most)
            self.capped_by_server = True

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    @property
    def generation(self) -> int:
        """Counts `notify()` calls: read it before reading the state a hold depends on."""
        with self._changed:
            return self._generation

    def notify(self) -> None:
        """The state changed: every held request answers now (callable from any thread)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def hold(self, seconds: float, generation: int, most: int | None = None) -> bool:
        """Block the calling thread up to `seconds` unless a `notify()` came after
        `generation`; False, at once, when over the bound (and over `most`, if given)."""
        deadline = time.monotonic() + seconds
        limit = self.max_watchers if most is None else min(most, self.max_watchers)
        with self._changed:
            if self._held >= limit:
                return False
            self._held += 1
            try:
                while self._generation == generation:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            finally:
                self._held -= 1
        return True

    async def hold_async(self, seconds: float, generation: int) -> bool:
        """`hold` for a coroutine: waits on the running loop, holding no thread."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        with self._changed:
            if self._held >= self.max_watchers:
                return False
            if self._generation != generation:
                return True
            self._held += 1
            self._wakers.add(wake)
        try:
            async with asyncio.timeout(seconds):
                await changed.wait()
        except TimeoutError:
            pass
        finally:
            with self._changed:
                self._held -= 1
                self._wakers.discard(wake)
        return True
