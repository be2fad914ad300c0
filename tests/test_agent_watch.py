"""Watch mode end to end, over real HTTP on 127.0.0.1: held health requests on the agent side
(`GET /forest/health?wait=S` with `If-None-Match`) and the watch-mode client's fallback to
polling when an agent does not hold them.

Every wait here is deadline-bound: a held request runs on its own thread and the test waits
on an event (or on a count) with a timeout, never on a sleep that would make it pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import requests
from flask import Flask, Response, jsonify

from rpc_agent import RpcAgent
from rpc_common.signing import sign_bound
from rpc_datasource import HealthCheckClient

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

from tests.support import (
    HEALTH_PATH,
    TEST_SECRET,
    LiveServer,
    agent_app,
    before_agent,
    health_etag_of,
    live_server,
    signed,
    wait_until,
)

pytestmark = pytest.mark.slow

# Longest a request that must be answered "at once" may take: far below any wait used here.
AT_ONCE_S = 2.0
# Bound on anything that must happen eventually (a held request cut short, a client coming up).
DEADLINE_S = 10.0
# A wait no test ever lets run out: an answer to it came from a change, not from the clock.
LONG_WAIT = 20

SCHEMA_A: dict[str, Any] = {"collections": [{"name": "products", "fields": []}], "charts": []}
SCHEMA_B: dict[str, Any] = {"collections": [{"name": "orders", "fields": []}], "charts": []}


# --- helpers ------------------------------------------------------------------------------


class RequestCounter:
    """Counts the requests for the health route that reach the server."""

    def __init__(self, app: Flask) -> None:
        self._lock = threading.Lock()
        self._count = 0
        before_agent(app, self._seen)

    def _seen(self, environ: WSGIEnvironment) -> None:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            with self._lock:
                self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


class Agent:
    """An RpcAgent served for real, with its health requests counted."""

    def __init__(self, agent: RpcAgent, server: LiveServer, counter: RequestCounter) -> None:
        self.agent = agent
        self.server = server
        self.counter = counter

    @property
    def health_url(self) -> str:
        return self.server.url + HEALTH_PATH

    @property
    def held(self) -> int:
        return self.agent.held_requests.held


@contextmanager
def serving_agent(
    schema_provider: Callable[[], dict[str, Any]] | None = None, **settings: Any
) -> Iterator[Agent]:
    """An agent on a threaded server; on the way out, shutdown answers any request still held."""
    app, agent = agent_app(schema_provider, **settings)
    counter = RequestCounter(app)
    with live_server(app) as server:
        try:
            yield Agent(agent, server, counter)
        finally:
            agent.begin_shutdown()


def watch_target(wait: object) -> str:
    return f"{HEALTH_PATH}?wait={wait}"


def get(
    served: Agent,
    target: str,
    *,
    etag: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEADLINE_S,
) -> requests.Response:
    """A GET of `target`, signed for exactly that target unless `headers` are given."""
    sent = signed(target) if headers is None else dict(headers)
    if etag is not None:
        sent["If-None-Match"] = etag
    return requests.get(served.server.url + target, headers=sent, timeout=timeout)


def timed_get(served: Agent, target: str, **options: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = get(served, target, **options)
    return response, time.monotonic() - started


def current_etag(served: Agent) -> str:
    """The health ETag a plain request gets now."""
    response = get(served, HEALTH_PATH)
    assert response.status_code == 200
    return response.headers["ETag"]


class HeldRequest:
    """A watch sent from its own thread, so that the test can act while the agent holds it."""

    def __init__(self, served: Agent, wait: object, etag: str) -> None:
        self._served = served
        self._target = watch_target(wait)
        self._etag = etag
        self.done = threading.Event()
        self.response: requests.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._send, name="test-held-watch", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            self.response = get(
                self._served, self._target, etag=self._etag, timeout=LONG_WAIT + DEADLINE_S
            )
        except BaseException as error:  # handed to the test by answer()
            self.error = error
        finally:
            self.done.set()

    def answer(self, within: float) -> requests.Response:
        """The response, which must arrive within `within` seconds from now."""
        assert self.done.wait(within), f"the held request was not answered within {within} s"
        self._thread.join(within)
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def held(
    served: Agent, wait: object = LONG_WAIT, count: int = 1, etag: str | None = None
) -> HeldRequest:
    """A watch with the current ETag (or `etag`), once the agent holds it (`count` in all)."""
    watch = HeldRequest(served, wait, etag or current_etag(served))
    assert wait_until(lambda: served.held == count, DEADLINE_S), "the agent never held the watch"
    return watch


def assert_health(response: requests.Response, agent: RpcAgent, status: int = 200) -> None:
    """A health answer with the given status whose ETag is the token of its body."""
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert response.headers["ETag"] == health_etag_of(body)


class Calls:
    """A callback that counts its calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


@pytest.fixture
def served() -> Iterator[Agent]:
    with serving_agent(lambda: SCHEMA_A) as running:
        yield running


# --- the ETag -----------------------------------------------------------------------------


def test_health_etag_is_the_token_of_the_state_and_moves_with_it() -> None:
    schemas = [SCHEMA_A]
    with serving_agent(lambda: schemas[-1]) as served:
        first = get(served, HEALTH_PATH)
        second = get(served, HEALTH_PATH)
        assert_health(first, served.agent)
        assert_health(second, served.agent)
        # uptime_s moves between the two; the token does not.
        assert first.headers["ETag"] == second.headers["ETag"]

        schemas.append(SCHEMA_B)
        assert served.agent.schema_changed().result(timeout=5)
        migrated = get(served, HEALTH_PATH)
        assert_health(migrated, served.agent)

        served.agent.begin_shutdown()
        stopping = get(served, HEALTH_PATH)
        assert_health(stopping, served.agent, status=503)
        assert stopping.json()["status"] == "shutting_down"

    etags = [r.headers["ETag"] for r in (first, migrated, stopping)]
    assert len(set(etags)) == 3, etags


# --- the wait parameter -------------------------------------------------------------------


@pytest.mark.parametrize(
    "wait", ["abc", "", "-1", "nan", "inf", "-inf", "1e999", "1_0", "%201", "%D9%A1", "+1"]
)
def test_a_malformed_wait_is_a_400_json(served: Agent, wait: str) -> None:
    response = get(served, watch_target(wait), etag=current_etag(served))
    assert response.status_code == 400, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "bad_request"
    assert isinstance(body["reason"], str) and body["reason"]


@pytest.mark.parametrize("wait", ["0", "0.5", ".5", "1e-3", "30"])
def test_a_well_formed_wait_is_accepted(served: Agent, wait: str) -> None:
    response, took = timed_get(served, watch_target(wait))
    assert_health(response, served.agent)
    assert took < AT_ONCE_S


def test_a_watch_without_if_none_match_answers_at_once(served: Agent) -> None:
    response, took = timed_get(served, watch_target(LONG_WAIT))
    assert_health(response, served.agent)
    assert took < AT_ONCE_S


def test_a_watch_with_another_etag_answers_at_once(served: Agent) -> None:
    response, took = timed_get(served, watch_target(LONG_WAIT), etag='"not-the-current-one"')
    assert_health(response, served.agent)
    assert response.headers["ETag"] != '"not-the-current-one"'
    assert took < AT_ONCE_S
    assert served.held == 0


# --- holding ------------------------------------------------------------------------------


def test_a_matching_watch_is_held_for_its_wait(served: Agent) -> None:
    etag = current_etag(served)
    response, took = timed_get(served, watch_target(0.5), etag=etag)
    assert_health(response, served.agent)
    assert response.headers["ETag"] == etag
    assert 0.4 <= took < 0.5 + AT_ONCE_S


@pytest.mark.parametrize(
    "form",
    [
        pytest.param("W/{etag}", id="weak"),
        pytest.param('"other", {etag}', id="in-a-list"),
    ],
)
def test_if_none_match_is_compared_as_http_says(served: Agent, form: str) -> None:
    watch = held(served, etag=form.format(etag=current_etag(served)))
    threading.Thread(target=served.agent.begin_shutdown, name="test-shutdown").start()
    assert watch.answer(within=AT_ONCE_S).status_code == 503


def test_shutdown_answers_a_held_watch_at_once_with_503(served: Agent) -> None:
    watch = held(served)
    threading.Thread(target=served.agent.begin_shutdown, name="test-shutdown").start()
    response = watch.answer(within=AT_ONCE_S)
    assert_health(response, served.agent, status=503)
    assert response.json()["status"] == "shutting_down"


def test_a_watch_that_arrives_after_shutdown_began_is_answered_at_once(served: Agent) -> None:
    served.agent.begin_shutdown()
    shutting_down_etag = get(served, HEALTH_PATH).headers["ETag"]
    response, took = timed_get(served, watch_target(LONG_WAIT), etag=shutting_down_etag)
    assert response.status_code == 503
    assert response.json()["status"] == "shutting_down"
    assert took < AT_ONCE_S


def test_a_schema_change_answers_a_held_watch_at_once() -> None:
    schemas = [SCHEMA_A]
    with serving_agent(lambda: schemas[-1]) as served:
        before = get(served, HEALTH_PATH)
        watch = held(served)
        schemas.append(SCHEMA_B)
        served.agent.schema_changed()
        response = watch.answer(within=AT_ONCE_S)
        assert_health(response, served.agent)
        assert response.headers["ETag"] != before.headers["ETag"]
        assert response.json()["schema_etag"] != before.json()["schema_etag"]
        assert served.held == 0


def test_a_wait_over_health_max_wait_is_capped() -> None:
    with serving_agent(health_max_wait=0.3) as served:
        etag = current_etag(served)
        response, took = timed_get(served, watch_target(LONG_WAIT), etag=etag)
        assert_health(response, served.agent)
        assert response.headers["ETag"] == etag
        assert 0.2 <= took < 0.3 + AT_ONCE_S


def test_a_watch_over_the_watcher_bound_answers_at_once() -> None:
    with serving_agent(health_max_watchers=1) as served:
        first = held(served)
        etag = current_etag(served)
        second, took = timed_get(served, watch_target(LONG_WAIT), etag=etag)
        assert_health(second, served.agent)
        assert second.headers["ETag"] == etag
        assert took < AT_ONCE_S
        assert served.held == 1
        served.agent.begin_shutdown()
        assert first.answer(within=AT_ONCE_S).status_code == 503


def test_with_no_watchers_allowed_every_watch_answers_at_once() -> None:
    with serving_agent(health_max_watchers=0) as served:
        etag = current_etag(served)
        for _ in range(3):
            response, took = timed_get(served, watch_target(LONG_WAIT), etag=etag)
            assert_health(response, served.agent)
            assert response.headers["ETag"] == etag
            assert took < AT_ONCE_S


# --- authentication -----------------------------------------------------------------------


def test_the_wait_is_part_of_the_signed_target(served: Agent) -> None:
    headers = signed(HEALTH_PATH)  # signed without the query it is sent with
    response = get(served, watch_target(1), headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized", "reason": "bad_signature"}


def test_the_v2_signature_binds_the_wait_value(served: Agent) -> None:
    headers = signed(watch_target(1))
    timestamp = headers["X-Timestamp"]
    assert headers["X-Signature"] == sign_bound(TEST_SECRET, timestamp, "GET", watch_target(1))
    response = get(served, watch_target(30), headers=headers)
    assert response.status_code == 401
    assert response.json()["reason"] == "bad_signature"


def test_an_unsigned_watch_is_refused(served: Agent) -> None:
    response = get(served, watch_target(1), headers={}, etag=current_etag(served))
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized", "reason": "missing_headers"}
    assert served.held == 0


# --- the client -----------------------------------------------------------------------------

POLL_S = 0.2
WINDOW_S = 2.0
# One request per POLL_S over WINDOW_S is ~10 (+ the first plain probe and watch).
FEWEST, MOST = 5, 15


@contextmanager
def agent_not_holding() -> Iterator[tuple[str, RequestCounter]]:
    """A real agent that never holds: `health_max_watchers=0`."""
    with serving_agent(health_max_watchers=0) as served:
        yield served.health_url, served.counter


@contextmanager
def agent_without_watch() -> Iterator[tuple[str, RequestCounter]]:
    """An older agent: plain health JSON and a constant ETag, `wait` ignored."""
    app = Flask(__name__)
    counter = RequestCounter(app)

    @app.get(HEALTH_PATH)
    def health() -> Response:
        response = jsonify(status="ok", instance_id="fixed", schema_etag='"x"')
        response.headers["ETag"] = '"h1"'
        return response

    with live_server(app) as server:
        yield server.url + HEALTH_PATH, counter


@pytest.mark.parametrize("agent", [agent_not_holding, agent_without_watch])
def test_a_watch_client_polls_an_agent_that_does_not_hold(
    agent: Callable[[], AbstractContextManager[tuple[str, RequestCounter]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rpc_datasource")
    with agent() as (url, counter):
        client = HealthCheckClient(
            url,
            TEST_SECRET,
            polling_interval=POLL_S,
            mode="watch",
            watch_wait=5,
            timeout=1,
            jitter=0,
        )
        try:
            client.start()
            # A tight loop passes MOST within milliseconds; a polling client never in the window.
            tight = wait_until(lambda: counter.count > MOST, WINDOW_S)
            requests_seen = counter.count
            stats = client.stats()
        finally:
            client.stop()
    assert not tight, f"{requests_seen} health requests in under {WINDOW_S} s: a tight loop"
    assert FEWEST <= requests_seen <= MOST, requests_seen
    assert stats.state == "up"
    assert stats.failures == 0
    fallbacks = [r for r in caplog.records if "polling every" in r.getMessage()]
    assert len(fallbacks) == 1, [r.getMessage() for r in fallbacks]


def test_a_watch_client_against_a_holding_agent_waits_and_sees_shutdown_at_once() -> None:
    down = Calls()
    with serving_agent() as served:
        client = HealthCheckClient(
            served.health_url,
            TEST_SECRET,
            polling_interval=POLL_S,
            mode="watch",
            watch_wait=1,
            timeout=1,
            jitter=0,
            on_server_down=down,
        )
        try:
            client.start()
            # Held for 1 s each: ~4 requests in 2.5 s, where polling would make ~12.
            busy = wait_until(lambda: served.counter.count > 5, 2.5)
            requests_seen = served.counter.count
            assert not busy, f"{requests_seen} health requests in 2.5 s: the watches were not held"
            assert wait_until(lambda: served.held == 1, DEADLINE_S)
            assert client.stats().state == "up"

            served.agent.begin_shutdown()
            assert wait_until(lambda: down.count >= 1, DEADLINE_S), "on_server_down never fired"
            # The re-probes that follow see 503 too; down does not fire again.
            assert wait_until(lambda: client.stats().failures >= 3, DEADLINE_S)
            stats = client.stats()
        finally:
            client.stop()
    assert down.count == 1
    assert stats.state == "down"
    assert stats.last_reason == "shutting_down"
