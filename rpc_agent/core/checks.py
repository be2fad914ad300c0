"""Readiness checks: the data server's own tests of what it cannot serve without (its database,
say), run in the background at their own interval, so that a probe only reads their results.

A plain check runs on a bounded pool of daemon threads of the agent's own, never on a server's
request thread; a coroutine check runs on an event loop thread of the agent's own. A check that
hangs holds one pool thread and is reported failing (`timeout`) once its timeout has passed;
it is not started again until that run ends. Nothing here holds process exit.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)

Check = Callable[[], Any] | Callable[[], Awaitable[Any]]

# The longest reason a check's failure shows, and how many pool threads plain checks share.
MAX_REASON_CHARS = 200
POOL_THREADS = 4
TIMEOUT_REASON = "timeout"
IDLE_WAKE_S = 60.0
STARTING_REASON = "starting"


class Readiness(StrEnum):
    """What the checks say together."""

    STARTING = "starting"  # some check has no result yet
    OK = "ok"
    DEGRADED = "degraded"  # only non-critical checks fail
    UNAVAILABLE = "unavailable"  # a critical check fails


@dataclass(frozen=True)
class CheckStatus:
    """One check's latest result; `since` moves only when `ok` does."""

    ok: bool
    reason: str | None
    since: datetime
    duration_s: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "failing",
            "reason": self.reason,
            "since": self.since.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


@dataclass
class _Registered:
    name: str
    check: Check
    interval: float
    timeout: float
    critical: bool
    is_coroutine: bool
    due: float = 0.0
    running_since: float | None = None  # when the run in flight began
    run: int = 0  # counts runs, so that a late result of a timed-out run is told apart
    status: CheckStatus | None = None
    added_at: float = field(default_factory=time.monotonic)


def failure_reason(error: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The exception's text, cut short, with nothing of the secrets in it."""
    text = str(error) or type(error).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())  # one line
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


class _DaemonPool:
    """At most `size` daemon threads running submitted calls, started as needed."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0 and self._threads < self._size
            if start:
                self._threads += 1
        self._calls.put(call)
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            call = self._calls.get()
            with self._lock:
                self._idle -= 1
            call()


class ReadinessChecks:
    """The checks of one agent: `add()` them, then `readiness()` and `statuses()` read their
    latest results at no cost; `on_change` is called (off any lock) when a status flips."""

    def __init__(self, on_change: Callable[[], None], secrets: tuple[str, ...] = ()) -> None:
        self._on_change = on_change
        self._secrets = secrets
        self._checks: dict[str, _Registered] = {}
        self._lock = threading.Condition()
        self._version = 0
        self._woken = False
        self._scheduler_pid: int | None = None
        self._pool = _DaemonPool(POOL_THREADS, "rpc-agent-check")
        self._loop: asyncio.AbstractEventLoop | None = None
        # A fork while a thread of ours held the lock would leave it held in the child.
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_lock(reference))

    def add(
        self,
        name: str,
        check: Check,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        critical: bool = True,
    ) -> None:
        """Run `check` every `interval` seconds in the background; it passes by returning,
        fails by raising (its text is the reason) or by outlasting `timeout`. Outside a running
        event loop, waits for the first result (up to `timeout`)."""
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ValueError(f"a check's name must be 1 to 64 characters, got {name!r}")
        if not callable(check):
            raise TypeError(f"check {name!r} must be a function, got {check!r}")
        for argument, value in (("interval", interval), ("timeout", timeout)):
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ValueError(f"{argument} of check {name!r} must be > 0, got {value!r}")
        with self._lock:
            if name in self._checks:
                raise ValueError(f"a check named {name!r} is registered already")
            entry = _Registered(
                name, check, float(interval), float(timeout), critical, _is_coroutine(check)
            )
            self._checks[name] = entry
            self._version += 1
            self._wake_scheduler()
        self.ensure_running()
        if not _on_a_running_loop():
            self._wait_for_result(entry)

    def _wait_for_result(self, entry: _Registered) -> None:
        """Until `entry` has its first result (its timeout at most): so that a server whose
        app adds its checks before serving starts ready, not `starting`."""
        deadline = time.monotonic() + entry.timeout
        with self._lock:
            while entry.status is None and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)

    @property
    def version(self) -> int:
        """Moves whenever a check is added or a status flips (the health answer's cache key)."""
        return self._version

    def __bool__(self) -> bool:
        return bool(self._checks)

    def token(self) -> str:
        """The checks' statuses in a few characters, for the health ETag ("" with no check)."""
        with self._lock:
            return ",".join(
                f"{name}={'-' if entry.status is None else int(entry.status.ok)}"
                for name, entry in sorted(self._checks.items())
            )

    def statuses(self) -> dict[str, CheckStatus | None]:
        """Each check's latest status (None: no result yet)."""
        self.ensure_running()
        with self._lock:
            return {name: entry.status for name, entry in self._checks.items()}

    def readiness(self) -> Readiness:
        """Starting, ok, degraded or unavailable, from the latest statuses."""
        with self._lock:
            entries = list(self._checks.values())
        if any(entry.status is None for entry in entries):
            return Readiness.STARTING
        failing = [entry for entry in entries if entry.status is not None and not entry.status.ok]
        if any(entry.critical for entry in failing):
            return Readiness.UNAVAILABLE
        return Readiness.DEGRADED if failing else Readiness.OK

    # --- the scheduler -----------------------------------------------------------------

    def ensure_running(self) -> None:
        """One scheduler thread per process: a forked worker starts its own (cheap when it
        runs already: the health answer calls this each time)."""
        pid = os.getpid()
        if self._scheduler_pid == pid:
            return
        with self._lock:
            if self._scheduler_pid == pid or not self._checks:
                return
            if self._scheduler_pid is not None:
                # A forked worker: the runs in flight were the parent's, its threads are gone.
                for entry in self._checks.values():
                    entry.running_since, entry.due = None, 0.0
            self._scheduler_pid = pid
            self._pool = _DaemonPool(POOL_THREADS, "rpc-agent-check")
            self._loop = None
        threading.Thread(target=self._schedule, name="rpc-agent-checks", daemon=True).start()

    def _schedule(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                starts = []
                flipped = self._expire_timed_out(now)
                for entry in self._checks.values():
                    if entry.running_since is None and entry.due <= now:
                        entry.running_since = now
                        entry.run += 1
                        starts.append((entry, entry.run))
                wake = min(
                    (self._next_event(entry) for entry in self._checks.values()), default=math.inf
                )
            if flipped:
                self._on_change()
            for entry, run in starts:
                self._start(entry, run)
            with self._lock:
                if not self._woken:  # a result or a new check since the plan: plan again now
                    self._lock.wait(min(max(0.0, wake - time.monotonic()), IDLE_WAKE_S))
                self._woken = False

    def _wake_scheduler(self) -> None:
        """(Under the lock.) Have the scheduler plan again, and waiters look again."""
        self._woken = True
        self._lock.notify_all()

    def _next_event(self, entry: _Registered) -> float:
        """When the scheduler must look at `entry` again: its run's deadline, or when due."""
        if entry.running_since is None:
            return entry.due
        if entry.status is not None and entry.status.reason == TIMEOUT_REASON:
            return math.inf  # reported already: its end wakes the scheduler
        return entry.running_since + entry.timeout

    def _expire_timed_out(self, now: float) -> bool:
        """Report a run past its timeout as failing (`timeout`); its thread stays busy."""
        flipped = False
        for entry in self._checks.values():
            started = entry.running_since
            if started is None or now - started < entry.timeout:
                continue
            if entry.status is None or entry.status.reason != TIMEOUT_REASON:
                flipped |= self._record(entry, ok=False, reason=TIMEOUT_REASON, took=None)
        return flipped

    def _start(self, entry: _Registered, run: int) -> None:
        if entry.is_coroutine:
            future = asyncio.run_coroutine_threadsafe(
                _timed(entry.check, entry.timeout), self._check_loop()
            )
            future.add_done_callback(lambda done: self._finish_async(entry, run, done))
        else:
            self._pool.submit(lambda: self._run_plain(entry, run))

    def _run_plain(self, entry: _Registered, run: int) -> None:
        started = time.monotonic()
        try:
            entry.check()
        except BaseException as error:  # a check's failure, whatever it raised
            self._finish(entry, run, error, time.monotonic() - started)
            if not isinstance(error, Exception):
                logger.error("check %r raised %s: reported failing", entry.name, type(error))
            return
        self._finish(entry, run, None, time.monotonic() - started)

    def _finish_async(self, entry: _Registered, run: int, done: Future[float]) -> None:
        try:
            took = done.result()
        except BaseException as error:
            self._finish(entry, run, error, None)
            return
        self._finish(entry, run, None, took)

    def _finish(
        self, entry: _Registered, run: int, error: BaseException | None, took: float | None
    ) -> None:
        with self._lock:
            if entry.run != run:
                return
            now = time.monotonic()
            entry.running_since = None
            entry.due = now + entry.interval
            if isinstance(error, TimeoutError | asyncio.TimeoutError):
                reason: str | None = TIMEOUT_REASON
            elif error is not None:
                reason = failure_reason(error, self._secrets)
            else:
                reason = None
            flipped = self._record(entry, ok=error is None, reason=reason, took=took)
            self._wake_scheduler()
        if flipped:
            self._on_change()

    def _record(
        self, entry: _Registered, *, ok: bool, reason: str | None, took: float | None
    ) -> bool:
        """Store a result (under the lock); whether the check's status flipped (a new reason
        alone changes the body, not the health ETag, so it wakes no held request)."""
        before = entry.status
        flipped = before is None or before.ok != ok
        since = datetime.now(UTC) if flipped or before is None else before.since
        entry.status = CheckStatus(ok, reason, since, took)
        if flipped or (before is not None and before.reason != reason):
            self._version += 1
            level = logging.INFO if ok else logging.WARNING
            logger.log(level, "check %r: %s", entry.name, "ok" if ok else f"failing ({reason})")
        return flipped

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        """The agent's own event loop thread for coroutine checks, started on first use."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="rpc-agent-check-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop


def _renew_lock(reference: weakref.ref[ReadinessChecks]) -> None:
    checks = reference()
    if checks is not None:
        checks._lock = threading.Condition()


async def _timed(check: Check, timeout: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        await check()
    return time.monotonic() - started


def _on_a_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _is_coroutine(check: Check) -> bool:
    call = type(check).__call__ if not inspect.isfunction(check) else check
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(call)
