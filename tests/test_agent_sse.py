"""The legacy SSE stream against a real threaded server, and its connection manager alone."""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
import requests

from rpc_agent import RpcAgent
from rpc_agent.core.sse import SseConnection, SseConnectionManager, StreamEnd, format_event
from rpc_common.protocol import (
    HEARTBEAT_EVENT,
    STOP_EVENT,
    SUPERSEDED_EVENT,
    SUPERSEDED_RETRY_MS,
)
from tests.support import LiveServer, agent_app, live_server, signed, wait_until

pytestmark = pytest.mark.slow

SSE = "/forest/sse"
TIMEOUT = (2, 5)
DEADLINE = 5.0
STOP_DATA = {"event": "RpcServerStop"}
SUPERSEDED_DATA = {"event": "superseded"}


@dataclass
class Event:
    name: str
    data: str
    at: float


class EventReader:
    """Parses SSE event blocks off a streamed response, stamping each with monotonic time."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next_event(self) -> Event | None:
        """The next complete event, or None when the server ended the stream."""
        name, data = "message", []
        seen = False
        for raw in self._lines:
            line = raw.decode("utf-8")
            if line == "":
                if seen:
                    return Event(name, "\n".join(data), time.monotonic())
                continue
            seen = True
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        return None

    def read(self, count: int) -> list[Event]:
        events = []
        for _ in range(count):
            event = self.next_event()
            assert event is not None, f"stream ended after {len(events)} of {count} events"
            events.append(event)
        return events

    def read_to_end(self, timeout: float = DEADLINE) -> list[Event]:
        """Every event until the server ends the stream; fails if still open at the deadline."""
        deadline = time.monotonic() + timeout
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
            assert time.monotonic() < deadline, f"stream still open after {timeout} s: {events}"
        return events


@dataclass
class Served:
    agent: RpcAgent
    server: LiveServer
    responses: list[requests.Response] = field(default_factory=list)

    def open_stream(self, headers: dict[str, str] | None = None) -> requests.Response:
        response = requests.get(
            self.server.url + SSE,
            headers=signed(SSE) if headers is None else headers,
            stream=True,
            timeout=TIMEOUT,
        )
        self.responses.append(response)
        return response

    def url(self, path: str) -> str:
        return self.server.url + path


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start agents on real servers; afterwards end their streams, stop them, and check that
    no thread they started is left running."""
    before = set(threading.enumerate())
    started: list[Served] = []
    with ExitStack() as stack:

        def start(heartbeat: float = 0.2) -> Served:
            app, agent = agent_app(sse_heartbeat_interval=heartbeat)
            served = Served(agent, stack.enter_context(live_server(app)))
            started.append(served)
            return served

        try:
            yield start
        finally:
            for served in started:
                for response in served.responses:
                    response.close()
                served.agent.begin_shutdown()

    def leftovers() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.is_alive()} - before

    assert wait_until(lambda: not leftovers(), DEADLINE), f"threads left behind: {leftovers()}"


# --- against a real server ----------------------------------------------------------------


def test_stream_headers(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.open_stream() as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"


def test_first_heartbeat_comes_at_once(serve: Callable[..., Served]) -> None:
    # With a 30 s interval, only an immediate heartbeat can arrive within the read timeout.
    served = serve(heartbeat=30.0)
    started = time.monotonic()
    with served.open_stream() as response:
        first = EventReader(response).read(1)[0]
    assert first.name == HEARTBEAT_EVENT
    assert first.data == '""'
    assert first.at - started < DEADLINE


def test_heartbeats_are_spaced_by_the_interval(serve: Callable[..., Served]) -> None:
    interval = 0.2
    served = serve(heartbeat=interval)
    with served.open_stream() as response:
        events = EventReader(response).read(7)
    assert all(event.name == HEARTBEAT_EVENT and event.data == '""' for event in events)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(events)]
    assert 0.5 * interval <= statistics.median(gaps) <= 3 * interval, gaps


def test_new_authenticated_stream_ends_the_previous_one(serve: Callable[..., Served]) -> None:
    served = serve()
    manager = served.agent.sse_manager
    with served.open_stream() as first_response:
        first = EventReader(first_response)
        assert first.read(1)[0].name == HEARTBEAT_EVENT
        first_connection = manager.current
        assert first_connection is not None and first_connection.active

        with served.open_stream() as second_response:
            assert second_response.status_code == 200
            second = EventReader(second_response)
            assert second.read(1)[0].name == HEARTBEAT_EVENT

            *heartbeats, last = first.read_to_end()
            assert all(event.name == HEARTBEAT_EVENT for event in heartbeats)
            assert (last.name, json.loads(last.data)) == (SUPERSEDED_EVENT, SUPERSEDED_DATA)
            assert first_connection.end_reason is StreamEnd.SUPERSEDED

            more = second.read(3)
            assert [event.name for event in more] == [HEARTBEAT_EVENT] * 3
            second_connection = manager.current
            assert second_connection is not None and second_connection is not first_connection
            assert second_connection.active


def test_unauthenticated_stream_does_not_end_the_active_one(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    manager = served.agent.sse_manager
    with served.open_stream() as response:
        reader = EventReader(response)
        assert reader.read(1)[0].name == HEARTBEAT_EVENT
        active = manager.current
        assert active is not None

        refused = requests.get(served.url(SSE), timeout=TIMEOUT)
        assert refused.status_code == 401
        assert refused.json() == {"error": "Unauthorized", "reason": "missing_headers"}
        bad = requests.get(served.url(SSE), headers=signed("/forest/health"), timeout=TIMEOUT)
        assert bad.status_code == 401
        assert bad.json()["reason"] == "bad_signature"

        assert [event.name for event in reader.read(3)] == [HEARTBEAT_EVENT] * 3
        assert manager.current is active
        assert active.active


def test_shutdown_sends_stop_and_ends_the_stream(serve: Callable[..., Served]) -> None:
    # A long interval shows that shutdown wakes the stream rather than waiting for a tick.
    served = serve(heartbeat=30.0)
    with served.open_stream() as response:
        reader = EventReader(response)
        assert reader.read(1)[0].name == HEARTBEAT_EVENT
        asked = time.monotonic()
        served.agent.begin_shutdown()
        rest = reader.read_to_end()
    assert [event.name for event in rest] == [STOP_EVENT]
    assert json.loads(rest[0].data) == STOP_DATA
    assert rest[0].at - asked < DEADLINE
    assert wait_until(lambda: served.agent.sse_manager.current is None, DEADLINE)

    health = requests.get(
        served.url("/forest/health"), headers=signed("/forest/health"), timeout=TIMEOUT
    )
    assert health.status_code == 503
    assert health.json()["status"] == "shutting_down"


def test_stream_opened_after_shutdown_gets_stop_at_once(serve: Callable[..., Served]) -> None:
    served = serve(heartbeat=30.0)
    served.agent.begin_shutdown()
    with served.open_stream() as response:
        assert response.status_code == 200
        events = EventReader(response).read_to_end()
    assert [event.name for event in events] == [STOP_EVENT]
    assert json.loads(events[0].data) == STOP_DATA
    assert wait_until(lambda: served.agent.sse_manager.current is None, DEADLINE)


def test_client_that_closes_its_response_is_cleaned_up(serve: Callable[..., Served]) -> None:
    served = serve()
    manager = served.agent.sse_manager
    with served.open_stream() as response:
        assert EventReader(response).read(1)[0].name == HEARTBEAT_EVENT
        connection = manager.current
        assert connection is not None
    assert wait_until(lambda: manager.current is None, DEADLINE), (
        "the manager still holds the stream"
    )
    # The agent still serves a new stream afterwards.
    with served.open_stream() as again:
        assert EventReader(again).read(1)[0].name == HEARTBEAT_EVENT
        assert manager.current is not None and manager.current is not connection


def test_client_that_drops_its_socket_is_cleaned_up(serve: Callable[..., Served]) -> None:
    served = serve()
    manager = served.agent.sse_manager
    headers = signed(SSE)
    request = (
        f"GET {SSE} HTTP/1.1\r\nHost: 127.0.0.1:{served.server.port}\r\n"
        f"X-Timestamp: {headers['X-Timestamp']}\r\nX-Signature: {headers['X-Signature']}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=DEADLINE) as sock:
        sock.sendall(request)
        received = b""
        while b"event: heartbeat" not in received:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before a heartbeat: {received!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert manager.current is not None
    assert wait_until(lambda: manager.current is None, DEADLINE), (
        "the manager still holds the stream"
    )


def test_head_request_leaves_no_stream_registered(serve: Callable[..., Served]) -> None:
    # HEAD is answered like GET without a body: no stream is ever sent, so none may stay held.
    served = serve()
    response = requests.head(served.url(SSE), headers=signed(SSE, method="HEAD"), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert wait_until(lambda: served.agent.sse_manager.current is None, DEADLINE), (
        "a HEAD request left a phantom SSE connection registered"
    )


# --- SseConnectionManager and format_event alone ------------------------------------------


def test_register_ends_the_previous_connection_as_superseded() -> None:
    manager = SseConnectionManager()
    first = manager.register()
    assert first.active and first.end_reason is None
    assert manager.current is first
    second = manager.register()
    assert not first.active
    assert first.end_reason is StreamEnd.SUPERSEDED
    assert second.active
    assert manager.current is second


def test_unregister_only_clears_a_matching_connection() -> None:
    manager = SseConnectionManager()
    first = manager.register()
    second = manager.register()
    manager.unregister(first)
    assert manager.current is second
    manager.unregister(SseConnection())
    assert manager.current is second
    manager.unregister(second)
    assert manager.current is None
    manager.unregister(second)
    assert manager.current is None


def test_shutdown_ends_the_current_connection_and_later_ones() -> None:
    manager = SseConnectionManager()
    connection = manager.register()
    manager.shutdown()
    assert not connection.active
    assert connection.end_reason is StreamEnd.SHUTDOWN
    later = manager.register()
    assert not later.active
    assert later.end_reason is StreamEnd.SHUTDOWN


def test_shutdown_without_a_connection_still_ends_later_ones() -> None:
    manager = SseConnectionManager()
    manager.shutdown()
    assert manager.current is None
    assert manager.register().end_reason is StreamEnd.SHUTDOWN


def test_first_end_reason_wins() -> None:
    manager = SseConnectionManager()
    connection = manager.register()
    manager.register()
    manager.shutdown()
    assert connection.end_reason is StreamEnd.SUPERSEDED
    assert connection.wait_for_end(0.0) is StreamEnd.SUPERSEDED


def test_concurrent_registrations_leave_one_active_connection() -> None:
    manager = SseConnectionManager()
    barrier = threading.Barrier(10)
    registered: list[SseConnection] = []
    lock = threading.Lock()

    def register() -> None:
        barrier.wait(timeout=DEADLINE)
        connection = manager.register()
        with lock:
            registered.append(connection)

    threads = [threading.Thread(target=register) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert len(registered) == 10
    active = [connection for connection in registered if connection.active]
    assert len(active) == 1
    assert manager.current is active[0]
    ended = [connection for connection in registered if not connection.active]
    assert all(connection.end_reason is StreamEnd.SUPERSEDED for connection in ended)


def test_stream_generator_heartbeats_until_superseded_then_unregisters() -> None:
    manager = SseConnectionManager()
    stream = manager.open_stream(heartbeat_interval=0.01)
    assert next(stream) == format_event(HEARTBEAT_EVENT, '""')
    assert next(stream) == format_event(HEARTBEAT_EVENT, '""')
    newer = manager.register()
    assert list(stream) == [
        format_event(SUPERSEDED_EVENT, json.dumps(SUPERSEDED_DATA), SUPERSEDED_RETRY_MS)
    ]
    assert manager.current is newer


def test_stream_generator_sends_stop_on_shutdown_then_unregisters() -> None:
    manager = SseConnectionManager()
    stream = manager.open_stream(heartbeat_interval=30.0)
    assert next(stream).startswith(f"event: {HEARTBEAT_EVENT}\n")
    manager.shutdown()
    rest = list(stream)
    assert rest == [format_event(STOP_EVENT, json.dumps(STOP_DATA))]
    assert manager.current is None


def test_closing_the_stream_generator_unregisters() -> None:
    manager = SseConnectionManager()
    stream = manager.open_stream(heartbeat_interval=30.0)
    next(stream)
    stream.close()
    assert manager.current is None


def test_format_event_splits_multi_line_data() -> None:
    block = format_event("update", "first\nsecond\nthird")
    assert block.endswith("\n\n")
    lines = block[:-2].split("\n")
    assert lines == ["event: update", "data: first", "data: second", "data: third"]


def test_format_event_single_line() -> None:
    assert format_event(HEARTBEAT_EVENT, '""') == 'event: heartbeat\ndata: ""\n\n'
    stop = format_event(STOP_EVENT, json.dumps(STOP_DATA))
    name_line, data_line = stop[:-2].split("\n")
    assert name_line == "event: RpcServerStop"
    assert json.loads(data_line.removeprefix("data: ")) == STOP_DATA


def test_the_superseded_event_asks_its_client_to_wait_before_reconnecting() -> None:
    manager = SseConnectionManager()
    stream = manager.open_stream(heartbeat_interval=30.0)
    next(stream)
    manager.register()
    (block,) = list(stream)
    assert block == (
        f"event: {SUPERSEDED_EVENT}\n"
        'data: {"event": "superseded"}\n'
        f"retry: {SUPERSEDED_RETRY_MS}\n\n"
    )


def test_a_stream_of_a_replaced_worker_ends_with_no_last_event() -> None:
    manager = SseConnectionManager()
    stream = manager.open_stream(heartbeat_interval=30.0)
    next(stream)
    manager.end_current()
    assert list(stream) == []
    assert manager.current is None
