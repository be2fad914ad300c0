"""`rpc_agent.metrics`: requests counted by the request hook, gauges read from live agents.

Requests go through the real middlewares: the WSGI one under werkzeug's test client, the
ASGI one under the in-process driver of test_agent_asgi (no server, no sleeps).

The state collector sums over every live agent of the process, and agents of earlier tests
may linger until collected. Each test collects garbage first, then the gauges are checked
as deltas from a reading taken before (held watches, SSE streams), or against the other live
agents (shutting_down), and the info metric is read for the test's own agent's instance_id.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from werkzeug.test import Client

from rpc_agent.core.agent import AgentCore
from rpc_agent.core.events import AgentRequestEvent, get_request_hooks, set_request_hooks
from rpc_agent.metrics import AgentMetrics, instrument, uninstrument
from rpc_agent.process import state as server_process
from rpc_common.signing import signed_headers
from rpc_common.version import package_version
from tests.support import OTHER_SECRET, TEST_SECRET, signed
from tests.support.asgi_calls import (
    LONG_INTERVAL,
    LONG_WAIT,
    SSE,
    asgi_test,
    call,
    current_etag,
    eventually,
    request,
    watch,
)
from tests.support.asgi_calls import wrapped as asgi_wrapped
from tests.support.wsgi_calls import HEALTH, SCHEMA_ROUTE, get_signed
from tests.support.wsgi_calls import wrapped as wsgi_wrapped

pytestmark = pytest.mark.slow

REQUESTS = "forest_agent_requests_total"
UNAUTHORIZED = "forest_agent_unauthorized_total"
HELD = "forest_agent_held_watches"
STREAMS = "forest_agent_sse_streams"
SHUTTING_DOWN = "forest_agent_shutting_down"
INFO = "forest_agent_info"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh registry with the agent metrics on it; the request hooks put back after."""
    saved = get_request_hooks()
    gc.collect()  # agents of earlier tests out of the live set, where nothing holds them
    fresh = CollectorRegistry()
    instrument(fresh)
    yield fresh
    uninstrument(fresh)
    set_request_hooks(saved)


def requests(registry: CollectorRegistry, route: str, status: int) -> float:
    return registry.get_sample_value(REQUESTS, {"route": route, "status": str(status)}) or 0.0


def all_requests(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every (route, status) counted so far."""
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == REQUESTS
    }


def unauthorized(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(UNAUTHORIZED, {"reason": reason}) or 0.0


def gauge(registry: CollectorRegistry, name: str) -> float:
    found = registry.get_sample_value(name)
    assert found is not None, f"{name} not exposed"
    return found


def others_shutting_down(agent: AgentCore) -> bool:
    return any(other.shutting_down for other in server_process.live_agents() if other is not agent)


# --- requests through the WSGI middleware ----------------------------------------------------


def test_instrument_is_idempotent_and_adds_one_request_hook(registry: CollectorRegistry) -> None:
    metrics = instrument(registry)
    assert isinstance(metrics, AgentMetrics)
    assert instrument(registry) is metrics
    hooks = get_request_hooks()
    assert hooks.count(metrics.observe_request) == 1
    assert hooks[-1] == metrics.observe_request


def test_signed_health_and_schema_answers_are_counted_by_route_and_status(
    registry: CollectorRegistry,
) -> None:
    client = Client(wsgi_wrapped())
    assert get_signed(client, HEALTH).status_code == 200
    assert get_signed(client, HEALTH).status_code == 200
    schema = get_signed(client, SCHEMA_ROUTE)
    assert schema.status_code == 200
    again = get_signed(client, SCHEMA_ROUTE, **{"If-None-Match": schema.headers["ETag"]})
    assert again.status_code == 304
    assert all_requests(registry) == {
        ("health", "200"): 2.0,
        ("rpc-schema", "200"): 1.0,
        ("rpc-schema", "304"): 1.0,
    }


def test_a_watch_answered_at_once_by_a_single_threaded_server_is_counted_once(
    registry: CollectorRegistry,
) -> None:
    client = Client(wsgi_wrapped())  # wsgi.multithread False: the watch is not held
    etag = get_signed(client, HEALTH).headers["ETag"]
    response = get_signed(client, f"{HEALTH}?wait=30", **{"If-None-Match": etag})
    assert response.status_code == 200
    assert all_requests(registry) == {("health", "200"): 2.0}


def test_refusals_are_counted_as_401s_and_by_reason(registry: CollectorRegistry) -> None:
    client = Client(wsgi_wrapped())
    assert client.get(HEALTH).status_code == 401
    wrong = signed(HEALTH, secret=OTHER_SECRET)
    assert client.get(HEALTH, headers=wrong).status_code == 401
    assert client.get(SCHEMA_ROUTE, headers=signed(SCHEMA_ROUTE, secret=OTHER_SECRET)).status_code
    stale = signed_headers(TEST_SECRET, target=HEALTH, now=datetime.now(UTC) - timedelta(hours=1))
    response = client.get(HEALTH, headers=stale)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "timestamp_out_of_window"

    assert requests(registry, "health", 401) == 3.0
    assert requests(registry, "rpc-schema", 401) == 1.0
    assert requests(registry, "health", 200) == 0.0
    assert unauthorized(registry, "missing_headers") == 1.0
    assert unauthorized(registry, "bad_signature") == 2.0
    assert unauthorized(registry, "timestamp_out_of_window") == 1.0
    assert unauthorized(registry, "malformed_timestamp") == 0.0


def test_405_and_413_are_counted(registry: CollectorRegistry) -> None:
    client = Client(wsgi_wrapped())
    assert client.post(HEALTH, headers=signed(HEALTH, method="POST")).status_code == 405
    big = b"x" * (64 * 1024 + 1)
    assert client.get(HEALTH, data=big, headers=signed(HEALTH)).status_code == 413
    assert client.get(SCHEMA_ROUTE, data=big, headers=signed(SCHEMA_ROUTE)).status_code == 413
    assert all_requests(registry) == {
        ("health", "405"): 1.0,
        ("health", "413"): 1.0,
        ("rpc-schema", "413"): 1.0,
    }
    # Refused before the signature is read: no 401, no refusal reason.
    assert requests(registry, "health", 401) == 0.0


@pytest.mark.parametrize("path", ["/", "/products", "/forest", "/forest/unknown", "/health"])
def test_paths_outside_the_agents_routes_are_not_counted(
    registry: CollectorRegistry, path: str
) -> None:
    client = Client(wsgi_wrapped())
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["X-From"] == "app"
    assert all_requests(registry) == {}
    assert get_signed(client, HEALTH).status_code == 200
    assert all_requests(registry) == {("health", "200"): 1.0}


def test_a_raising_request_hook_is_logged_and_the_answer_still_goes_out(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def raising(event: AgentRequestEvent) -> None:
        raise RuntimeError("hook broke")

    set_request_hooks([raising, *get_request_hooks()])
    client = Client(wsgi_wrapped())
    with caplog.at_level(logging.ERROR, logger="rpc_common.hooks"):
        response = get_signed(client, HEALTH)
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    # The hook after the raising one still ran.
    assert requests(registry, "health", 200) == 1.0
    records = [r for r in caplog.records if r.name == "rpc_common.hooks"]
    assert len(records) == 1
    assert "request hook" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "hook broke" in str(records[0].exc_info[1])


# --- gauges read from the live agents (ASGI driver) ------------------------------------------


def test_info_names_each_live_agent_by_instance_id_and_version(
    registry: CollectorRegistry,
) -> None:
    middleware = wsgi_wrapped()
    agent = middleware.agent
    labels = {"instance_id": agent.instance_id, "version": package_version()}
    assert agent.version == package_version()
    assert registry.get_sample_value(INFO, labels) == 1.0

    other = wsgi_wrapped().agent
    assert other.instance_id != agent.instance_id
    assert registry.get_sample_value(INFO, labels) == 1.0
    assert registry.get_sample_value(INFO, {**labels, "instance_id": other.instance_id}) == 1.0

    # Read at scrape time: a collected agent is no longer named.
    del middleware, agent, other
    gc.collect()
    assert registry.get_sample_value(INFO, labels) is None


@asgi_test
async def test_a_held_watch_is_gauged_then_answered_503_at_shutdown(
    registry: CollectorRegistry,
) -> None:
    middleware = asgi_wrapped()
    agent = middleware.agent
    held_before = gauge(registry, HELD)
    assert gauge(registry, SHUTTING_DOWN) == float(others_shutting_down(agent))

    exchange = request(middleware, watch(5), etag=await current_etag(middleware))
    await eventually(lambda: gauge(registry, HELD) == held_before + 1, "the watch gauged")
    assert agent.held_requests.held == 1
    assert exchange.start is None
    # Only the plain read of the ETag is counted: a held watch is counted when answered.
    assert all_requests(registry) == {("health", "200"): 1.0}

    agent.begin_shutdown()
    await exchange.response()
    assert exchange.status == 503
    assert all_requests(registry) == {("health", "200"): 1.0, ("health", "503"): 1.0}
    await eventually(lambda: gauge(registry, HELD) == held_before, "the watch ungauged")
    assert gauge(registry, SHUTTING_DOWN) == 1.0


@asgi_test
async def test_an_sse_stream_is_gauged_until_shutdown_ends_it(registry: CollectorRegistry) -> None:
    middleware = asgi_wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    streams_before = gauge(registry, STREAMS)

    stream = request(middleware, SSE)
    await stream.first_events(1)
    assert stream.status == 200
    assert gauge(registry, STREAMS) == streams_before + 1
    assert requests(registry, "sse", 200) == 1.0

    middleware.agent.begin_shutdown()
    await stream.response()
    assert gauge(registry, STREAMS) == streams_before
    assert gauge(registry, SHUTTING_DOWN) == 1.0
    assert all_requests(registry) == {("sse", "200"): 1.0}


@asgi_test
async def test_a_watch_that_is_not_held_is_counted_at_once(registry: CollectorRegistry) -> None:
    middleware = asgi_wrapped()
    held_before = gauge(registry, HELD)
    answered = await call(middleware, watch(LONG_WAIT), etag='"not-the-current-one"')
    assert answered.status == 200
    bad = await call(middleware, watch("soon"))
    assert bad.status == 400
    assert gauge(registry, HELD) == held_before
    assert all_requests(registry) == {("health", "200"): 1.0, ("health", "400"): 1.0}


def test_uninstrument_removes_the_hook_and_the_metrics(registry: CollectorRegistry) -> None:
    metrics = instrument(registry)
    others = tuple(hook for hook in get_request_hooks() if hook != metrics.observe_request)
    client = Client(wsgi_wrapped())
    assert get_signed(client, HEALTH).status_code == 200
    assert requests(registry, "health", 200) == 1.0

    uninstrument(registry)
    assert get_request_hooks() == others
    assert not [family.name for family in registry.collect()]
    assert get_signed(client, HEALTH).status_code == 200
    (family,) = metrics.requests.collect()
    assert [s.value for s in family.samples if s.name == REQUESTS] == [1.0]

    assert instrument(registry) is not metrics  # the names are free again
    assert all_requests(registry) == {}
