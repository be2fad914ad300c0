"""Legacy SSE: event formatting and the manager that keeps one active stream at a time."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from enum import StrEnum

from rpc_agent.process.state import worker_heartbeat
from rpc_common.protocol import (
    HEARTBEAT_EVENT,
    STOP_EVENT,
    SUPERSEDED_EVENT,
    SUPERSEDED_RETRY_MS,
)

logger = logging.getLogger(__name__)


def format_event(event: str, data: str, retry_ms: int | None = None) -> str:
    """One SSE event block; multi-line data becomes several `data:` lines."""
    lines = [f"event: {event}"] + [f"data: {line}" for line in data.split("\n")]
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    return "\n".join(lines) + "\n\n"


HEARTBEAT_BLOCK = format_event(HEARTBEAT_EVENT, '""')
STOP_BLOCK = format_event(STOP_EVENT, json.dumps({"event": STOP_EVENT}))
SUPERSEDED_BLOCK = format_event(
    SUPERSEDED_EVENT, json.dumps({"event": SUPERSEDED_EVENT}), retry_ms=SUPERSEDED_RETRY_MS
)


class StreamEnd(StrEnum):
    """Why the agent ended a stream."""

    SUPERSEDED = "superseded"  # a newer stream took the slot
    SHUTDOWN = "shutdown"
    REPLACED = "replaced"  # the worker is being replaced while the server lives on


class SseConnection:
    """One open stream; the manager ends it by setting its end reason."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._on_end: Callable[[], None] | None = None
        self.end_reason: StreamEnd | None = None

    @property
    def active(self) -> bool:
        return not self._ended.is_set()

    def end(self, reason: StreamEnd) -> None:
        """End the stream (idempotent: the first reason wins)."""
        with self._lock:
            if self._ended.is_set():
                return
            self.end_reason = reason
            self._ended.set()
            on_end = self._on_end
        if on_end is not None:
            on_end()

    def call_on_end(self, on_end: Callable[[], None]) -> None:
        """Have `on_end` called (from any thread) when the stream is ended; at once if it
        already was. How a coroutine stream learns of its end."""
        with self._lock:
            self._on_end = on_end
            ended = self._ended.is_set()
        if ended:
            on_end()

    def wait_for_end(self, timeout: float) -> StreamEnd | None:
        """Wait up to `timeout` seconds; the end reason if the stream was ended meanwhile."""
        self._ended.wait(timeout)
        return self.end_reason


class SseConnectionManager:
    """Thread-safe holder of the single active stream: a new one ends the previous one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: SseConnection | None = None
        self._shutting_down = False

    @property
    def current(self) -> SseConnection | None:
        with self._lock:
            return self._current

    def register(self, client: str = "-") -> SseConnection:
        """A new active connection; the previous one, if any, is ended as superseded."""
        connection = SseConnection()
        with self._lock:
            previous, self._current = self._current, connection
            if self._shutting_down:
                connection.end(StreamEnd.SHUTDOWN)
        if previous is not None:
            logger.warning(
                "SSE stream %s superseded by %s from %s: two masters on one agent's stream?",
                previous.id,
                connection.id,
                client,
            )
            previous.end(StreamEnd.SUPERSEDED)
        return connection

    def unregister(self, connection: SseConnection) -> None:
        """Forget the connection if it is still the current one."""
        with self._lock:
            if self._current is connection:
                self._current = None

    def shutdown(self) -> None:
        """End the active stream with `RpcServerStop`; later streams end at once."""
        with self._lock:
            self._shutting_down = True
            current = self._current
        if current is not None:
            current.end(StreamEnd.SHUTDOWN)

    def end_current(self) -> None:
        """End the active stream with no last event: its client reconnects (to a newer
        worker) as after any lost connection."""
        current = self.current
        if current is not None:
            current.end(StreamEnd.REPLACED)

    def open_stream(self, heartbeat_interval: float, client: str = "-") -> Iterator[str]:
        """The event blocks of a new stream, for a thread to send: heartbeats until
        superseded, shut down or gone.

        The stream registers when it is first iterated, so a response whose body is never
        sent (a HEAD request) neither takes the slot nor ends the active stream.
        """
        stream = SseStream(self, client)
        try:
            while True:
                block, finished = stream.step()
                if block:
                    yield block
                if finished:
                    return
                stream.connection.wait_for_end(heartbeat_interval)
        except GeneratorExit:
            stream.disconnected()
            raise
        finally:
            stream.close()


class SseStream:
    """One stream's course, apart from how it waits and writes: registered when made, one
    `step()` per heartbeat interval or end, a log line at each end. The thread and the
    coroutine adapters drive it."""

    def __init__(self, manager: SseConnectionManager, client: str = "-") -> None:
        self._manager = manager
        self.connection = manager.register(client)
        self._started = time.monotonic()
        self._heartbeats = 0
        self._outcome = "client disconnected"
        logger.info("SSE stream %s started", self.connection.id)

    def step(self) -> tuple[str, bool]:
        """The block to send now ("" for none) and whether the stream then ends."""
        reason = self.connection.end_reason
        if reason is StreamEnd.SUPERSEDED:
            self._outcome = "superseded"
            return SUPERSEDED_BLOCK, True
        if reason is StreamEnd.REPLACED:
            self._outcome = "worker replaced"
            return "", True
        if reason is StreamEnd.SHUTDOWN:
            self._outcome = "sent RpcServerStop"
            return STOP_BLOCK, True
        self._heartbeats += 1
        worker_heartbeat()
        return HEARTBEAT_BLOCK, False

    def disconnected(self) -> None:
        """The client went away."""
        logger.info("SSE client of stream %s disconnected", self.connection.id)

    def close(self) -> None:
        """Free the slot and log how the stream ended."""
        self._manager.unregister(self.connection)
        logger.info(
            "SSE stream %s stopped (%s) after %.1f s, %d heartbeats sent",
            self.connection.id,
            self._outcome,
            time.monotonic() - self._started,
            self._heartbeats,
        )
