"""A rate limit for log lines anyone can cause (refused requests, invalid HTTP): a token
bucket that counts what it drops (pure, on an injected clock), the one bucket a process
shares for such lines, a logging filter that puts a server's own lines through it, and
`clipped` to bound what a peer sent in a line."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable


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


# Every line an anonymous client can cause in this process (the agent's refusals, the HTTP
# server's warnings about invalid requests) takes a token of this one bucket, so that together
# they stay at 10 at once, then 1 a second. Read at each use: a test may put in its own.
ANONYMOUS_CLIENT_LINES = LogRateLimiter(burst=10, per_second=1.0)


def dropped_note(dropped: int) -> str:
    """What a line let through adds about the lines dropped before it ("" when none)."""
    return f" ({dropped} more lines caused by clients not logged)" if dropped else ""


def clipped(text: str, limit: int) -> str:
    """`text` quoted (`repr`), cut to its first `limit` characters and then giving its whole
    length: a log line carries a bounded amount of what a peer sent, escaped."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class AnonymousLinesFilter(logging.Filter):
    """On a server's logger (`uvicorn.error`): its records whose message is one of `messages`
    (lines any client can cause, such as "Invalid HTTP request received.") go through
    `ANONYMOUS_CLIENT_LINES`; the others pass untouched."""

    def __init__(self, messages: Iterable[str]) -> None:
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a line dropped; a line let through says how many were dropped before."""
        if not isinstance(record.msg, str) or record.msg not in self.messages:
            return True
        dropped = ANONYMOUS_CLIENT_LINES.admit()
        if dropped is None:
            return False
        if dropped:
            record.msg = record.getMessage() + dropped_note(dropped)
            record.args = ()
        return True
