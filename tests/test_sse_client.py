"""The legacy SseClient against a real agent (and a silent stand-in): signing, stop, reconnects."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask, Response

from rpc_agent import RpcAgent
from rpc_common.signing import SignatureScheme
from rpc_datasource.legacy.sse_client import SseClient
from rpc_datasource.legacy.sse_parser import SseEvent

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

from tests.support import (
    OTHER_SECRET,
    TEST_SECRET,
    LiveServer,
    agent_app,
    before_agent,
    library_threads,
    start_server,
    wait_until,
)
from tests.support.scripted_server import Answer, scripted_server

pytestmark = pytest.mark.slow

DEADLINE = 10.0
SSE_ROUTE = "/forest/sse"
HEARTBEAT = "heartbeat"
STOP = "RpcServerStop"
FIRST_BACKOFF = 2.0
BACKOFF_JITTER = 0.2


class Recorder:
    """The client's callbacks: every event, the RpcServerStop calls, and Events to wait on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[SseEvent] = []
        self.stops = 0
        self.stopped = threading.Event()
        self.heartbeat = threading.Event()

    def on_event(self, event: SseEvent) -> None:
        with self._lock:
            self.events.append(event)
        if event.event == HEARTBEAT:
            self.heartbeat.set()

    def on_rpc_stop(self) -> None:
        with self._lock:
            self.stops += 1
        self.stopped.set()

    def names(self) -> list[str]:
        with self._lock:
            return [event.event for event in self.events]

    def heartbeats(self) -> int:
        return self.names().count(HEARTBEAT)

    def stop_count(self) -> int:
        with self._lock:
            return self.stops


class Agents:
    """Real agents on one fixed port; `start` serves a new one (a restart) on that port."""

    def __init__(self) -> None:
        self.servers: list[LiveServer] = []
        self.agents: list[RpcAgent] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SSE_ROUTE}"

    @property
    def agent(self) -> RpcAgent:
        return self.agents[-1]

    def start(self, **settings: Any) -> RpcAgent:
        options: dict[str, Any] = {"sse_heartbeat_interval": 0.1, **settings}
        app, agent = agent_app(**options)
        self.agents.append(agent)
        self.servers.append(start_server(app, self.port))
        self.port = self.servers[-1].port
        return agent

    def stop(self) -> None:
        self.servers[-1].stop()

    def close(self) -> None:
        for agent in self.agents:
            agent.begin_shutdown()  # ends any stream still open on the server side
        for server in self.servers:
            server.stop()


@pytest.fixture
def agents() -> Iterator[Agents]:
    running = Agents()
    try:
        yield running
    finally:
        running.close()


OpenClient = Callable[..., tuple[SseClient, Recorder]]


@pytest.fixture
def open_client() -> Iterator[OpenClient]:
    """Make started clients with recorded callbacks; every one is closed at teardown."""
    opened: list[SseClient] = []

    def make(
        url: str, secret: str = TEST_SECRET, *, start: bool = True, **options: Any
    ) -> tuple[SseClient, Recorder]:
        recorder = Recorder()
        arguments: dict[str, Any] = {
            "on_rpc_stop": recorder.on_rpc_stop,
            "on_event": recorder.on_event,
            # The agents send one every 0.1 s; the client gives up after three of its own
            # intervals of silence (0.9 s), so a loaded machine's pauses are no lost stream.
            "heartbeat_interval": 0.3,
            "connect_timeout": 2.0,
            "rng": random.Random(0),
        }
        arguments.update(options)
        client = SseClient(url, secret, **arguments)
        opened.append(client)
        if start:
            client.start()
        return client, recorder

    try:
        yield make
    finally:
        for client in opened:
            client.close()


# --- connecting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "require_bound"),
    [("v2", True), ("v1", False)],
    ids=["bound-signature", "original-signature"],
)
def test_connects_signed_and_receives_heartbeats(
    agents: Agents, open_client: OpenClient, scheme: SignatureScheme, require_bound: bool
) -> None:
    agent = agents.start(require_bound_signatures=require_bound)
    client, recorder = open_client(agents.url, signature_scheme=scheme)

    assert wait_until(lambda: recorder.heartbeats() >= 3)

    assert set(recorder.names()) == {HEARTBEAT}
    assert client.connection_attempts == 1
    assert agent.sse_manager.current is not None
    assert recorder.stop_count() == 0


def test_begin_shutdown_calls_on_rpc_stop_once(agents: Agents, open_client: OpenClient) -> None:
    agent = agents.start()
    client, recorder = open_client(agents.url)
    assert recorder.heartbeat.wait(DEADLINE)

    agent.begin_shutdown()
    assert recorder.stopped.wait(DEADLINE)
    # The process then goes away; the client's next attempt finds nothing listening.
    agents.stop()
    assert wait_until(lambda: client.connection_attempts >= 2)

    assert recorder.stop_count() == 1
    assert recorder.names()[-1] == STOP
    assert recorder.names().count(STOP) == 1


def test_reconnects_to_a_restarted_agent_with_a_fresh_signature(
    agents: Agents, open_client: OpenClient
) -> None:
    # A one-second clock window: a signature reused from the first connection would be refused.
    agents.start(allowed_clock_skew=1.0)
    client, recorder = open_client(agents.url)
    assert recorder.heartbeat.wait(DEADLINE)

    agents.agent.begin_shutdown()
    assert recorder.stopped.wait(DEADLINE)
    agents.stop()
    new_agent = agents.start(allowed_clock_skew=1.0)
    heard_before = recorder.heartbeats()

    # The first reconnect waits about 2 s (+/- 20 %).
    assert wait_until(lambda: recorder.heartbeats() >= heard_before + 2)
    assert client.connection_attempts >= 2
    assert new_agent.sse_manager.current is not None
    assert recorder.stop_count() == 1


def test_silence_longer_than_three_heartbeats_is_a_lost_connection(
    open_client: OpenClient,
) -> None:
    release = threading.Event()
    arrivals: list[float] = []
    app = Flask(__name__)

    @app.get(SSE_ROUTE)
    def silent_stream() -> Response:
        arrivals.append(time.monotonic())

        def events() -> Iterator[str]:
            yield 'event: heartbeat\ndata: ""\n\n'
            release.wait(30)

        return Response(events(), mimetype="text/event-stream")

    server = start_server(app)
    try:
        client, recorder = open_client(f"{server.url}{SSE_ROUTE}", heartbeat_interval=0.1)
        assert client.silence_timeout == pytest.approx(0.3)
        assert recorder.heartbeat.wait(DEADLINE)

        assert wait_until(lambda: client.connection_attempts >= 2)
        assert wait_until(lambda: len(arrivals) >= 2)
        assert wait_until(lambda: recorder.heartbeats() >= 2)
        assert recorder.stop_count() == 0
        client.close()
    finally:
        release.set()
        server.stop()


# --- refusals ------------------------------------------------------------------------------------


def test_unauthorized_client_keeps_retrying_and_close_interrupts_the_backoff(
    open_client: OpenClient,
) -> None:
    arrivals: list[float] = []
    app, agent = agent_app(sse_heartbeat_interval=0.1)

    def record_arrival(environ: WSGIEnvironment) -> None:
        if environ.get("PATH_INFO") == SSE_ROUTE:
            arrivals.append(time.monotonic())

    before_agent(app, record_arrival)

    server = start_server(app)
    try:
        client, recorder = open_client(f"{server.url}{SSE_ROUTE}", OTHER_SECRET)

        assert wait_until(lambda: len(arrivals) >= 2)
        assert client.connection_attempts == 2
        assert arrivals[1] - arrivals[0] >= FIRST_BACKOFF * (1 - BACKOFF_JITTER) - 0.05
        assert agent.sse_manager.current is None
        assert recorder.events == []
        assert recorder.stop_count() == 0

        # The client now waits about 4 s before its third attempt: close must not wait it out.
        started = time.monotonic()
        client.close()
        elapsed = time.monotonic() - started
        assert elapsed < 0.5, f"close() took {elapsed:.2f} s during the backoff"
        assert not library_threads()
        assert len(arrivals) == 2
    finally:
        server.stop()


# --- closing and starting ------------------------------------------------------------------------


def test_close_with_the_stream_open_is_prompt_and_idempotent(
    agents: Agents, open_client: OpenClient
) -> None:
    # Heartbeats 10 s apart and a 30 s silence timeout: the client's read is blocked.
    agents.start(sse_heartbeat_interval=10)
    client, recorder = open_client(agents.url, heartbeat_interval=10)
    assert recorder.heartbeat.wait(DEADLINE)
    assert client.silence_timeout == pytest.approx(30)

    started = time.monotonic()
    client.close()
    elapsed = time.monotonic() - started

    assert wait_until(lambda: not library_threads(), DEADLINE)
    assert client.closed
    client.close()
    assert client.closed
    assert client.connection_attempts == 1
    assert elapsed < 1.0, f"close() took {elapsed:.2f} s with a stream open"


def test_close_while_heartbeats_flow_ends_the_thread_cleanly(
    agents: Agents, open_client: OpenClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes: list[str] = []

    def record_crash(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        crashes.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", record_crash)
    agents.start()
    client, recorder = open_client(agents.url)
    assert wait_until(lambda: recorder.heartbeats() >= 2)

    client.close()

    # close() joined the thread: had it died of an exception, the hook has seen it by now.
    assert wait_until(lambda: not library_threads(), DEADLINE)
    assert crashes == []


def test_start_is_idempotent(agents: Agents, open_client: OpenClient) -> None:
    agents.start()
    client, recorder = open_client(agents.url, start=False)
    assert wait_until(lambda: not library_threads(), DEADLINE)

    client.start()
    client.start()
    assert recorder.heartbeat.wait(DEADLINE)
    client.start()

    assert len(library_threads("rpc-health-engine")) == 1
    assert client.connection_attempts == 1


def test_start_after_close_does_nothing(agents: Agents, open_client: OpenClient) -> None:
    agent = agents.start()
    client, recorder = open_client(agents.url, start=False)

    client.close()
    client.start()

    assert client.closed
    assert wait_until(lambda: not library_threads(), DEADLINE)
    assert client.connection_attempts == 0
    assert recorder.events == []
    assert agent.sse_manager.current is None


# --- callbacks that raise ------------------------------------------------------------------------


def test_raising_on_rpc_stop_is_logged_and_the_client_keeps_running(
    agents: Agents, open_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agents.start()
    stop_called = threading.Event()

    def explode() -> None:
        stop_called.set()
        raise RuntimeError("on_rpc_stop failure for the test")

    client, recorder = open_client(agents.url, on_rpc_stop=explode)
    assert recorder.heartbeat.wait(DEADLINE)

    with caplog.at_level(logging.ERROR):
        agent.begin_shutdown()
        assert stop_called.wait(DEADLINE)
        # The client goes on: it reconnects, to the agent that replaced the stopped one.
        assert wait_until(lambda: recorder.names().count(STOP) >= 1)
        agents.stop()
        agents.start()
        heard_before = recorder.heartbeats()
        assert wait_until(lambda: recorder.heartbeats() >= heard_before + 1)

    assert client.connection_attempts >= 2
    raised = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert raised, "the callback's exception was not logged"
    assert library_threads("rpc-health-engine") == ["rpc-health-engine"]


def test_raising_on_event_is_logged_and_events_keep_coming(
    agents: Agents, open_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    agents.start()
    seen: list[SseEvent] = []

    def explode(event: SseEvent) -> None:
        seen.append(event)
        raise RuntimeError("on_event failure for the test")

    def raised() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]

    with caplog.at_level(logging.ERROR):
        client, _ = open_client(agents.url, on_event=explode)
        # The record of each raise is written just after the event is seen: wait for both.
        assert wait_until(lambda: len(seen) >= 3 and len(raised()) >= 3)

    assert client.connection_attempts == 1


# --- constructor ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "options"),
    [
        ("auth_secret", {"auth_secret": ""}),
        ("heartbeat_interval", {"heartbeat_interval": 0}),
        ("heartbeat_interval", {"heartbeat_interval": -1.0}),
        ("connect_timeout", {"connect_timeout": 0}),
    ],
)
def test_out_of_range_arguments_are_refused(argument: str, options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"url": "http://127.0.0.1:9/forest/sse", "auth_secret": "x" * 40}
    arguments.update(options)

    with pytest.raises(ValueError, match=argument):
        SseClient(**arguments)


# --- hostile agents, refusals and the fight of two masters --------------------------------


@pytest.mark.parametrize(
    "answer",
    [Answer.never(), Answer(200, b'event: heartbeat\ndata: ""\n\n').drip_head(0.3)],
    ids=["never-answers", "drips-its-headers"],
)
def test_close_returns_at_once_whatever_the_agent_does(
    open_client: OpenClient, answer: Answer
) -> None:
    with scripted_server() as server:
        server.script(answer)
        client, _ = open_client(f"{server.url}{SSE_ROUTE}", connect_timeout=30.0)
        assert server.wait_for_requests(1)
        started = time.monotonic()
        client.close()
        took = time.monotonic() - started
        server.release()
    assert took < 1.0, f"close() took {took:.2f} s"
    assert wait_until(lambda: not library_threads(), DEADLINE)


def test_a_refusal_is_named_at_warning_with_the_agents_reason(
    agents: Agents, open_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    agents.start()
    with caplog.at_level(logging.INFO, logger="rpc_datasource.legacy.sse_client"):
        client, _ = open_client(agents.url, OTHER_SECRET)
        assert wait_until(lambda: client.connection_attempts >= 1 and refusals(caplog) >= 1)
    (line,) = [r for r in client_records(caplog) if "refused" in r.getMessage()][:1]
    assert line.levelno == logging.WARNING
    assert "HTTP 401 (bad_signature)" in line.getMessage()
    assert "FOREST_AUTH_PREVIOUS_SECRETS" in line.getMessage()  # the reason's usual cause


def client_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record for record in caplog.records if record.name == "rpc_datasource.legacy.sse_client"
    ]


def refusals(caplog: pytest.LogCaptureFixture) -> int:
    return sum("refused" in record.getMessage() for record in client_records(caplog))


def test_a_superseded_client_waits_for_the_agents_retry_instead_of_taking_the_stream_back(
    agents: Agents, open_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agents.start()
    with caplog.at_level(logging.WARNING, logger="rpc_datasource.legacy.sse_client"):
        first, first_events = open_client(agents.url)
        assert first_events.heartbeat.wait(DEADLINE)
        second, second_events = open_client(agents.url)
        assert second_events.heartbeat.wait(DEADLINE)
        assert wait_until(lambda: "superseded" in first_events.names())
        # The second master keeps the stream: the first waits (30 s) rather than reconnect.
        beats = second_events.heartbeats()
        assert wait_until(lambda: second_events.heartbeats() >= beats + 5)
    assert first.connection_attempts == 1
    assert second.connection_attempts == 1
    current = agent.sse_manager.current
    assert current is not None and current.active
    warnings = [r.getMessage() for r in caplog.records if "another master" in r.getMessage()]
    assert len(warnings) == 1, warnings
