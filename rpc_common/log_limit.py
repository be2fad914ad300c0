"""A rate limit for log lines anyone can cause (refused requests): a token bucket that counts
what it drops (pure, on an injected clock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LogRateLimiter:
    """Lets `burst` lines through at once, then `per_second` on average; counts the rest."""

    def __init__(
        self,
        burst: int = 10,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not per_second > 0:
            raise ValueError("burst must be >= 1 and per_second > 0")
        self._burst = float(burst)
        self._per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()
        self._dropped = 0

    def admit(self) -> int | None:
        """None when this line is to be dropped; else how many were dropped since the last
        line let through (to say so in this one)."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(self._burst, self._tokens + elapsed * self._per_second)
            self._updated = now
            if self._tokens < 1.0:
                self._dropped += 1
                return None
            self._tokens -= 1.0
            dropped, self._dropped = self._dropped, 0
            return dropped
