"""HealthCheckClient against real agents and servers on 127.0.0.1: outages, recovery, callbacks."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask, Response, jsonify

from rpc_agent import AgentSettings, RpcAgent
from rpc_datasource import HealthCheckClient, HealthStats, ProbeEvent
from rpc_datasource.runtime.engine import ENGINE_THREAD_NAME, shared_engine

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

from tests.support import (
    HEALTH_PATH,
    OTHER_SECRET,
    TEST_SECRET,
    Failure,
    HangingApp,
    LiveServer,
    agent_app,
    agent_health,
    before_agent,
    closed_port,
    library_threads,
    live_server,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.slow

CLIENT_LOGGER = "rpc_datasource.health_client"
WAIT_S = 10.0


# --- helpers -------------------------------------------------------------------------------


def wait_for_probes(client: HealthCheckClient, count: int, timeout: float = WAIT_S) -> HealthStats:
    """Wait until `client` has made at least `count` probes; its stats then."""
    assert wait_until(lambda: client.stats().probes >= count, timeout), (
        f"only {client.stats().probes} probes, wanted {count}"
    )
    return client.stats()


class Counter:
    """A callback that counts its calls and sets an event on each."""

    def __init__(self, action: Callable[[], None] | None = None) -> None:
        self.calls = 0
        self.event = threading.Event()
        self._action = action
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        self.event.set()
        if self._action is not None:
            self._action()


class CountingAgent:
    """A real agent whose app records each health request's arrival and can be made to fail."""

    def __init__(self, **settings: Any) -> None:
        self.app, self.agent = agent_app(**settings)
        self.fail_with: int | None = None
        self.hits: list[tuple[float, bool]] = []  # (monotonic arrival, answered a failure)
        self._lock = threading.Lock()
        before_agent(self.app, self._record)

    def _record(self, _environ: WSGIEnvironment) -> Failure | None:
        failing = self.fail_with
        with self._lock:
            self.hits.append((time.monotonic(), failing is not None))
        if failing is not None:
            return failing, "failing on purpose"
        return None

    def snapshot(self) -> list[tuple[float, bool]]:
        with self._lock:
            return list(self.hits)


class Switch:
    """A WSGI app that forwards to whichever app is current (a restart without a closed port)."""

    def __init__(self, app: Flask) -> None:
        self.current = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.current(environ, start_response)


@pytest.fixture
def make_client() -> Iterator[Callable[..., HealthCheckClient]]:
    """Builds clients and stops every one of them at teardown."""
    made: list[HealthCheckClient] = []

    def build(url: str, secret: str = TEST_SECRET, **options: Any) -> HealthCheckClient:
        client = HealthCheckClient(url, secret, **options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.stop()


FAST: dict[str, Any] = {"polling_interval": 0.05, "timeout": 1.0}


# --- constructor -----------------------------------------------------------------------------

URL = "http://127.0.0.1:5001/forest/health"


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"polling_interval": 0}, "polling_interval"),
        ({"polling_interval": -1.0}, "polling_interval"),
        ({"polling_interval": math.nan}, "polling_interval"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": -1}, "failure_threshold"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -0.5}, "timeout"),
        ({"failure_retry_interval": 0}, "failure_retry_interval"),
        ({"failure_retry_interval": -2.0}, "failure_retry_interval"),
        ({"jitter": -0.01}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_out_of_range_arguments_raise_naming_the_argument(
    options: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        HealthCheckClient(URL, TEST_SECRET, **options)


def test_empty_secret_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="auth_secret"):
        HealthCheckClient(URL, "")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/forest/health", "127.0.0.1:5001/forest/health", "", "/forest/health"]
)
def test_non_http_url_raises(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        HealthCheckClient(url, TEST_SECRET)


def test_defaults_follow_the_contract() -> None:
    client = HealthCheckClient(URL, TEST_SECRET)
    try:
        assert client.polling_interval == 30.0
        assert client.failure_threshold == 3
        assert client.timeout == 5.0
        assert client.failure_retry_interval == 5.0
        assert client.closed is False
    finally:
        client.stop()


@pytest.mark.parametrize(("interval", "expected_retry"), [(2.0, 2.0), (5.0, 5.0), (60.0, 5.0)])
def test_failure_retry_interval_defaults_to_min_of_5_and_polling(
    interval: float, expected_retry: float
) -> None:
    client = HealthCheckClient(URL, TEST_SECRET, polling_interval=interval)
    try:
        assert client.failure_retry_interval == expected_retry
    finally:
        client.stop()


def test_a_new_client_has_not_probed() -> None:
    client = HealthCheckClient(URL, TEST_SECRET)
    try:
        stats = client.stats()
        assert stats.state == "unknown"
        assert (stats.probes, stats.failures, stats.consecutive_failures) == (0, 0, 0)
        assert stats.last_error is None
        assert library_threads("rpc-health") == []
    finally:
        client.stop()


# --- lifecycle -------------------------------------------------------------------------------


def test_start_is_idempotent_and_stop_ends_polling(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    interval = 0.1
    counting = CountingAgent()
    with live_server(counting.app) as server:
        client = make_client(server.url + HEALTH_PATH, polling_interval=interval, jitter=0.0)
        assert client.closed is False
        client.start()
        client.start()
        client.start()
        assert wait_until(lambda: len(counting.snapshot()) >= 8)
        assert library_threads("rpc-health").count(ENGINE_THREAD_NAME) == 1

        client.stop()
        client.stop()
        assert client.closed is True
        assert shared_engine.current() is None
        assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
        hits_after_stop = len(counting.snapshot())

        client.start()  # a stopped client stays stopped
        assert client.closed is True
        assert shared_engine.current() is None
        assert library_threads("rpc-health") == []
        assert len(counting.snapshot()) == hits_after_stop

    # One poller: one probe per interval over the whole run, where three pollers would make
    # three. (Counted, not timed gap by gap: a loaded machine delays single arrivals. The
    # spacing itself is proven on a fake clock in test_watcher.)
    arrivals = [at for at, _ in counting.snapshot()]
    assert len(arrivals) >= 8
    intervals_elapsed = (arrivals[-1] - arrivals[0]) / interval
    assert len(arrivals) - 1 <= intervals_elapsed * 1.5 + 1, (len(arrivals), intervals_elapsed)


# --- healthy agent ---------------------------------------------------------------------------


def test_healthy_agent_is_up_and_fires_nothing(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down, recovered = Counter(), Counter()
    events: list[ProbeEvent] = []
    app, _ = agent_app()
    with live_server(app) as server:
        client = make_client(
            server.url + HEALTH_PATH,
            on_server_down=down,
            on_server_recovered=recovered,
            hooks=[events.append],
            **FAST,
        )
        client.start()
        first = wait_for_probes(client, 2)
        later = wait_for_probes(client, first.probes + 3)
        client.stop()

    assert later.state == "up"
    assert later.probes > first.probes
    assert (later.failures, later.consecutive_failures) == (0, 0)
    assert later.last_error is None
    assert later.last_latency_s is not None and later.last_latency_s > 0
    assert (down.calls, recovered.calls) == (0, 0)
    assert not any(event.actions for event in events)


# --- outages ---------------------------------------------------------------------------------


def test_closed_port_fires_down_once_and_keeps_failing(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down_stats: list[HealthStats] = []
    client: HealthCheckClient

    def on_down() -> None:
        down_stats.append(client.stats())

    down = Counter(on_down)
    recovered = Counter()
    client = make_client(
        f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}",
        failure_threshold=3,
        on_server_down=down,
        on_server_recovered=recovered,
        **FAST,
    )
    client.start()
    assert down.event.wait(WAIT_S)
    assert down_stats[0].consecutive_failures == 3

    stats = wait_for_probes(client, down_stats[0].probes + 5)
    assert down.calls == 1
    assert recovered.calls == 0
    assert stats.state == "down"
    assert stats.consecutive_failures == stats.probes
    assert stats.failures == stats.probes
    assert stats.last_error is not None
    assert stats.last_error.startswith("connection failed")
    assert stats.outage_started is not None


def test_outage_then_recovery_on_the_same_port(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down, recovered = Counter(), Counter()
    app, _ = agent_app()
    servers: list[LiveServer] = [start_server(app)]
    try:
        client = make_client(
            servers[0].url + HEALTH_PATH,
            failure_threshold=2,
            on_server_down=down,
            on_server_recovered=recovered,
            **FAST,
        )
        client.start()
        assert wait_until(lambda: client.stats().state == "up")

        servers[0].stop()
        assert down.event.wait(WAIT_S)
        outage_stats = client.stats()
        assert outage_stats.state == "down"
        assert outage_stats.last_outage_s is None
        wait_for_probes(client, outage_stats.probes + 2)
        assert down.calls == 1
        assert recovered.calls == 0

        servers.append(start_server(app, servers[0].port))
        assert recovered.event.wait(WAIT_S)
        stats = wait_for_probes(client, client.stats().probes + 2)
    finally:
        for server in servers:
            server.stop()

    assert (down.calls, recovered.calls) == (1, 1)
    assert stats.state == "up"
    assert stats.consecutive_failures == 0
    assert stats.outage_started is None
    assert stats.last_outage_s is not None and stats.last_outage_s > 0


def test_shutting_down_fires_down_on_the_first_probe_that_sees_it(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    seen: list[HealthStats] = []
    client: HealthCheckClient
    down = Counter(lambda: seen.append(client.stats()))
    app, agent = agent_app()
    with live_server(app) as server:
        client = make_client(
            server.url + HEALTH_PATH, failure_threshold=5, on_server_down=down, **FAST
        )
        client.start()
        assert wait_until(lambda: client.stats().state == "up")
        agent.begin_shutdown()
        assert down.event.wait(WAIT_S)
        after = wait_for_probes(client, seen[0].probes + 3)
        client.stop()

    assert seen[0].consecutive_failures == 1
    assert seen[0].state == "down"
    assert seen[0].last_error is not None and "shutting down" in seen[0].last_error
    assert down.calls == 1
    assert after.state == "down"


def failing_health_app(view: Callable[[], Any]) -> Flask:
    app = Flask(__name__)
    app.add_url_rule(HEALTH_PATH, "health", view)
    return app


@pytest.mark.parametrize(
    ("view", "expected_in_error"),
    [
        (lambda: Response("internal error", status=500), "500"),
        (lambda: jsonify(hello="world"), "health JSON"),
        (lambda: jsonify(status="ok"), "health JSON"),  # no instance_id
        (lambda: jsonify(status="ok", instance_id=42), "health JSON"),
        (lambda: jsonify(status="warming_up", instance_id="x"), "health JSON"),
        (lambda: Response("OK", mimetype="text/plain"), "JSON"),
        (lambda: jsonify(["status", "ok"]), "JSON"),
    ],
    ids=[
        "500",
        "other-json",
        "no-instance-id",
        "non-string-instance-id",
        "status-not-ok",
        "plain-text",
        "json-array",
    ],
)
def test_non_health_answers_are_failures(
    make_client: Callable[..., HealthCheckClient],
    view: Callable[[], Any],
    expected_in_error: str,
) -> None:
    down, recovered = Counter(), Counter()
    with live_server(failing_health_app(view)) as server:
        client = make_client(
            server.url + HEALTH_PATH,
            failure_threshold=2,
            on_server_down=down,
            on_server_recovered=recovered,
            **FAST,
        )
        client.start()
        assert down.event.wait(WAIT_S)
        stats = client.stats()
        client.stop()

    assert stats.state == "down"
    assert stats.failures == stats.probes >= 2
    assert stats.last_error is not None and expected_in_error in stats.last_error
    assert (down.calls, recovered.calls) == (1, 0)


def test_wrong_secret_is_a_failure_naming_the_agents_reason(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down = Counter()
    app, _ = agent_app()
    with live_server(app) as server:
        client = make_client(
            server.url + HEALTH_PATH, OTHER_SECRET, failure_threshold=2, on_server_down=down, **FAST
        )
        client.start()
        assert down.event.wait(WAIT_S)
        stats = client.stats()
        client.stop()

    assert stats.state == "down"
    assert stats.failures == stats.probes >= 2
    assert stats.last_error is not None
    assert "401" in stats.last_error
    assert "bad_signature" in stats.last_error


# --- timeouts --------------------------------------------------------------------------------


def test_timeout_is_a_failure_and_stop_returns_within_about_timeout(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    timeout = 0.5
    down = Counter()
    hanging = HangingApp()
    with live_server(hanging.app) as server:
        try:
            client = make_client(
                server.url + HEALTH_PATH,
                polling_interval=0.05,
                timeout=timeout,
                failure_threshold=2,
                on_server_down=down,
            )
            client.start()
            assert down.event.wait(WAIT_S)
            stats = client.stats()
            assert stats.state == "down"
            assert stats.last_error is not None and "timed out" in stats.last_error
            assert stats.failures >= 2

            # Stop while a probe hangs: stop() waits for it at most about `timeout`.
            hanging.entered.clear()
            assert hanging.entered.wait(WAIT_S)
            started = time.monotonic()
            client.stop()
            took = time.monotonic() - started
            assert client.closed is True
            assert took < timeout + 2.0, f"stop() took {took:.2f} s"
        finally:
            hanging.release.set()


# --- callbacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("raised", [RuntimeError, SystemExit, KeyboardInterrupt])
def test_a_raising_callback_is_logged_and_polling_goes_on(
    make_client: Callable[..., HealthCheckClient],
    caplog: pytest.LogCaptureFixture,
    raised: type[BaseException],
) -> None:
    caplog.set_level(logging.ERROR, logger=CLIENT_LOGGER)

    def explode() -> None:
        raise raised("callback exploded on purpose")

    down = Counter(explode)
    recovered = Counter()
    counting = CountingAgent()
    with live_server(counting.app) as server:
        client = make_client(
            server.url + HEALTH_PATH,
            failure_threshold=2,
            on_server_down=down,
            on_server_recovered=recovered,
            **FAST,
        )
        client.start()
        assert wait_until(lambda: client.stats().state == "up")
        counting.fail_with = 500
        assert down.event.wait(WAIT_S)
        at_down = client.stats()
        wait_for_probes(client, at_down.probes + 3)  # polling goes on after the raise
        counting.fail_with = None
        assert recovered.event.wait(WAIT_S)
        client.stop()

    assert (down.calls, recovered.calls) == (1, 1)
    logged = [
        record
        for record in caplog.records
        if record.name == CLIENT_LOGGER and record.exc_info is not None
    ]
    assert logged, "the callback's exception was not logged"
    exc_type, exc, _ = logged[0].exc_info  # type: ignore[misc]
    assert exc_type is raised
    assert "callback exploded on purpose" in str(exc)
    assert "on_server_down" in logged[0].getMessage()
    assert "callback exploded on purpose" in caplog.text  # the traceback is in the output


def test_callbacks_run_without_the_clients_lock(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    seen: list[HealthStats] = []
    client: HealthCheckClient
    down = Counter(lambda: seen.append(client.stats()))
    client = make_client(
        f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}",
        failure_threshold=1,
        on_server_down=down,
        **FAST,
    )
    client.start()
    assert down.event.wait(WAIT_S)
    assert wait_until(lambda: len(seen) == 1), "stats() inside on_server_down deadlocked"
    assert seen[0].state == "down"


def test_stop_from_inside_a_callback_returns(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    stopped = threading.Event()
    client: HealthCheckClient

    def stop_myself() -> None:
        client.stop()
        stopped.set()

    down = Counter(stop_myself)
    client = make_client(
        f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}",
        failure_threshold=1,
        on_server_down=down,
        **FAST,
    )
    client.start()
    assert down.event.wait(WAIT_S)
    assert stopped.wait(WAIT_S), "stop() inside a callback did not return"
    assert client.closed is True
    assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
    assert down.calls == 1


# --- timing ----------------------------------------------------------------------------------


def test_first_failure_switches_to_the_faster_retry(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    polling = 2.0
    seen: list[HealthStats] = []
    client: HealthCheckClient
    down = Counter(lambda: seen.append(client.stats()))
    counting = CountingAgent()
    with live_server(counting.app) as server:
        client = make_client(
            server.url + HEALTH_PATH,
            polling_interval=polling,
            failure_retry_interval=0.05,
            failure_threshold=3,
            jitter=0.0,
            timeout=1.0,
            on_server_down=down,
        )
        client.start()
        assert wait_until(lambda: client.stats().probes >= 1)
        counting.fail_with = 503
        assert down.event.wait(WAIT_S)
        client.stop()

    hits = counting.snapshot()
    first_failure = next(i for i, (_, failed) in enumerate(hits) if failed)
    assert first_failure >= 1
    failing = [at for at, failed in hits[first_failure:]]
    assert len(failing) >= 3
    assert seen[0].consecutive_failures == 3
    # While healthy the client waits the polling interval ...
    assert failing[0] - hits[first_failure - 1][0] >= polling * 0.95
    # ... after the first failure it retries fast: down well before 3 polling intervals.
    retry_gaps = [failing[1] - failing[0], failing[2] - failing[1]]
    assert all(gap < 1.0 for gap in retry_gaps), retry_gaps
    assert failing[2] - failing[0] < polling


# --- probe events: what the datasource's schema checks are driven by -------------------------


def test_a_restart_between_probes_is_one_restarted_event(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down, recovered = Counter(), Counter()
    events: list[ProbeEvent] = []
    first_app, first_agent = agent_app()
    second_app, second_agent = agent_app()
    assert first_agent.instance_id != second_agent.instance_id
    switch = Switch(first_app)
    front = Flask(__name__)
    front.wsgi_app = switch  # type: ignore[method-assign]
    with live_server(front) as server:
        client = make_client(
            server.url + HEALTH_PATH,
            on_server_down=down,
            on_server_recovered=recovered,
            hooks=[events.append],
            **FAST,
        )
        client.start()
        wait_for_probes(client, 3)
        assert not any(event.restarted for event in events)

        switch.current = second_app  # the agent restarted; no probe saw it down
        assert wait_until(lambda: any(event.restarted for event in events))
        wait_for_probes(client, client.stats().probes + 4)
        client.stop()

    restarts = [event for event in events if event.restarted]
    assert len(restarts) == 1
    assert restarts[0].result.instance_id == second_agent.instance_id
    assert (down.calls, recovered.calls) == (0, 0)


def test_a_changed_schema_etag_shows_in_the_next_events(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    schema: dict[str, Any] = {"collections": [], "charts": []}
    events: list[ProbeEvent] = []
    app = Flask(__name__)
    agent = RpcAgent(
        app, settings=AgentSettings(auth_secret=TEST_SECRET), schema_provider=lambda: schema
    )
    with live_server(app) as server:
        client = make_client(server.url + HEALTH_PATH, hooks=[events.append], **FAST)
        client.start()
        wait_for_probes(client, 3)
        old_etag = agent_health(agent)["schema_etag"]
        assert {event.result.schema_etag for event in events} == {old_etag}

        schema = {"collections": [{"name": "products", "fields": []}], "charts": []}
        assert agent.schema_changed().result(timeout=5)
        new_etag = agent_health(agent)["schema_etag"]
        assert new_etag != old_etag
        assert wait_until(lambda: events[-1].result.schema_etag == new_etag)
        client.stop()

    assert not any(event.restarted for event in events)


def test_a_raising_hook_is_logged_and_polling_goes_on(
    make_client: Callable[..., HealthCheckClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    seen: list[ProbeEvent] = []

    def explode(event: ProbeEvent) -> None:
        raise RuntimeError("hook exploded on purpose")

    app, _ = agent_app()
    with live_server(app) as server:
        client = make_client(server.url + HEALTH_PATH, hooks=[explode, seen.append], **FAST)
        client.start()
        stats = wait_for_probes(client, 4)
        client.stop()

    assert stats.state == "up"
    assert len(seen) >= 4  # the hook after the raising one still gets every event
    assert "hook exploded on purpose" in caplog.text


# --- signature schemes -----------------------------------------------------------------------


def test_v1_scheme_works_against_an_agent(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    counting = CountingAgent()
    with live_server(counting.app) as server:
        client = make_client(server.url + HEALTH_PATH, signature_scheme="v1", **FAST)
        client.start()
        stats = wait_for_probes(client, 3)
        client.stop()

    assert stats.state == "up"
    assert stats.failures == 0


def test_v1_scheme_is_refused_when_bound_signatures_are_required(
    make_client: Callable[..., HealthCheckClient],
) -> None:
    down = Counter()
    app, _ = agent_app(require_bound_signatures=True)
    with live_server(app) as server:
        v1 = make_client(
            server.url + HEALTH_PATH,
            signature_scheme="v1",
            failure_threshold=1,
            on_server_down=down,
            **FAST,
        )
        v2 = make_client(server.url + HEALTH_PATH, signature_scheme="v2", **FAST)
        v1.start()
        v2.start()
        assert down.event.wait(WAIT_S)
        v2_stats = wait_for_probes(v2, 2)
        v1_stats = v1.stats()
        v1.stop()
        v2.stop()

    assert v1_stats.state == "down"
    assert v1_stats.last_error is not None
    assert "401" in v1_stats.last_error and "bad_signature" in v1_stats.last_error
    assert v2_stats.state == "up"
