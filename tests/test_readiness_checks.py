"""Readiness checks on the agent, in-process: what the health answer says while checks start,
pass, fail, hang and flip, and what it never waits for."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rpc_agent import AgentCore, AgentSettings, metrics
from rpc_agent.asgi import RpcAgentMiddleware as AsgiMiddleware
from rpc_agent.core.held_requests import health_etag
from rpc_agent.wsgi import RpcAgentMiddleware as WsgiMiddleware
from tests.support import TEST_SECRET, wait_until

FAST = 0.02  # a check interval that makes results come at once


def new_agent() -> AgentCore:
    return AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET))


def answer(agent: AgentCore) -> tuple[int, dict[str, Any], str]:
    state = agent.health_answer()
    return state.status_code, json.loads(state.body(agent.uptime_s())), state.etag


def eventually_status(agent: AgentCore, status: str) -> dict[str, Any]:
    """The health body once every check has a result and the status is `status`."""

    def reached() -> bool:
        body = answer(agent)[1]
        return body["status"] == status and body.get("reason") != "starting"

    assert wait_until(reached, 5.0), answer(agent)
    return answer(agent)[1]


class Switch:
    """A check whose outcome a test sets: passes, or raises `reason`."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.reason is not None:
            raise ConnectionError(self.reason)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that hanging checks wait on; set at the end, so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def test_an_agent_without_checks_answers_as_before() -> None:
    agent = new_agent()
    status, body, etag = answer(agent)
    assert (status, body["status"]) == (200, "ok")
    assert "checks" not in body and "reason" not in body
    assert etag == health_etag("ok", agent.instance_id, body["schema_etag"])


def test_passing_checks_answer_ok_with_each_checks_status() -> None:
    agent = new_agent()
    agent.add_check("database", lambda: None, interval=FAST)
    agent.add_check("cache", lambda: None, interval=FAST, critical=False)
    body = eventually_status(agent, "ok")
    assert set(body["checks"]) == {"database", "cache"}
    for check in body["checks"].values():
        assert check["status"] == "ok" and check["reason"] is None
        assert check["since"].endswith("Z")
    assert answer(agent)[0] == 200


def test_before_the_first_results_the_agent_is_unavailable_starting(
    release: threading.Event,
) -> None:
    """Checks added while the server serves already (here, from another thread): until
    their first result the agent says it is starting; `add_check` waits for that result."""
    agent = new_agent()
    added = threading.Thread(
        target=agent.add_check, args=("database", release.wait), kwargs={"timeout": 30}
    )
    added.start()
    assert wait_until(lambda: bool(agent.checks), 5.0)
    status, body, _ = answer(agent)
    assert (status, body["status"], body["reason"]) == (503, "unavailable", "starting")
    assert body["checks"]["database"]["reason"] == "starting"
    assert added.is_alive(), "add_check returned before the first result"
    release.set()
    added.join(5.0)
    assert not added.is_alive()
    eventually_status(agent, "ok")


def test_an_app_factory_that_adds_a_check_starts_ready() -> None:
    agent = new_agent()
    agent.add_check("database", lambda: None)
    status, body, _ = answer(agent)
    assert (status, body["status"]) == (200, "ok")


def test_a_check_added_on_a_running_loop_does_not_block_it() -> None:
    agent = new_agent()
    release = threading.Event()

    async def add() -> None:
        agent.add_check("database", release.wait, timeout=30)

    started = time.monotonic()
    asyncio.run(add())
    assert time.monotonic() - started < 5.0
    assert answer(agent)[1]["reason"] == "starting"
    release.set()
    eventually_status(agent, "ok")


def test_a_failing_critical_check_is_unavailable_and_a_non_critical_one_degraded() -> None:
    agent = new_agent()
    database, cache = Switch(), Switch()
    agent.add_check("database", database, interval=FAST)
    agent.add_check("cache", cache, interval=FAST, critical=False)
    eventually_status(agent, "ok")

    cache.reason = "cache node gone"
    body = eventually_status(agent, "degraded")
    assert answer(agent)[0] == 200
    assert body["checks"]["cache"] == {
        "status": "failing",
        "reason": "cache node gone",
        "since": body["checks"]["cache"]["since"],
    }
    database.reason = "no such table"
    body = eventually_status(agent, "unavailable")
    assert answer(agent)[0] == 503
    assert "reason" not in body  # not starting: the checks say why
    assert body["checks"]["database"]["reason"] == "no such table"

    database.reason = cache.reason = None
    eventually_status(agent, "ok")


def test_shutdown_wins_over_a_failing_check() -> None:
    agent = new_agent()
    database = Switch()
    database.reason = "down"
    agent.add_check("database", database, interval=FAST)
    eventually_status(agent, "unavailable")
    agent.begin_shutdown()
    status, body, _ = answer(agent)
    assert (status, body["status"]) == (503, "shutting_down")


def test_the_etag_moves_when_a_check_flips_not_when_only_its_reason_does() -> None:
    agent = new_agent()
    database = Switch()
    agent.add_check("database", database, interval=FAST, critical=False)
    eventually_status(agent, "ok")
    ok_etag = answer(agent)[2]
    database.reason = "first reason"
    eventually_status(agent, "degraded")
    failing_etag = answer(agent)[2]
    assert failing_etag != ok_etag
    database.reason = "second reason"
    assert wait_until(
        lambda: answer(agent)[1]["checks"]["database"]["reason"] == "second reason", 5.0
    )
    assert answer(agent)[2] == failing_etag


def test_a_reason_is_cut_to_200_characters_and_never_shows_the_secret() -> None:
    agent = new_agent()

    def leaky() -> None:
        raise RuntimeError(f"cannot log in with {TEST_SECRET} " + "x" * 500)

    agent.add_check("database", leaky, interval=FAST)
    body = eventually_status(agent, "unavailable")
    reason = body["checks"]["database"]["reason"]
    assert len(reason) <= 200
    assert TEST_SECRET not in reason and reason.startswith("cannot log in with ***")
    assert len(agent.health_answer().body(0.0)) < 1_000


def test_a_hanging_check_is_failing_with_timeout_and_never_delays_health(
    release: threading.Event,
) -> None:
    agent = new_agent()
    passes = Switch()
    agent.add_check("ok-one", passes, interval=FAST)
    started = time.monotonic()
    agent.add_check("hangs", release.wait, interval=FAST, timeout=0.3)
    body = eventually_status(agent, "unavailable")
    assert body["checks"]["hangs"] == {
        "status": "failing",
        "reason": "timeout",
        "since": body["checks"]["hangs"]["since"],
    }
    assert time.monotonic() - started >= 0.3
    # The hung run holds one thread; the other check goes on running meanwhile.
    calls = passes.calls
    assert wait_until(lambda: passes.calls >= calls + 3, 5.0)
    longest = max(_timed(agent.health_answer) for _ in range(200))
    assert longest < 0.3, "a health answer waited on the hung check"


def test_a_coroutine_check_runs_on_the_agents_own_loop() -> None:
    agent = new_agent()
    loops: list[str] = []
    state = {"fail": False}

    async def database() -> None:
        loops.append(threading.current_thread().name)
        await asyncio.sleep(0)
        if state["fail"]:
            raise OSError("connection pool exhausted")

    agent.add_check("database", database, interval=FAST)
    eventually_status(agent, "ok")
    state["fail"] = True
    body = eventually_status(agent, "unavailable")
    assert body["checks"]["database"]["reason"] == "connection pool exhausted"
    assert set(loops) == {"rpc-agent-check-loop"}


def test_a_slow_coroutine_check_times_out() -> None:
    agent = new_agent()

    async def slow() -> None:
        await asyncio.sleep(30)

    agent.add_check("database", slow, interval=FAST, timeout=0.2)
    body = eventually_status(agent, "unavailable")
    assert body["checks"]["database"]["reason"] == "timeout"


def test_checks_never_run_on_the_callers_thread() -> None:
    agent = new_agent()
    threads: set[str] = set()
    agent.add_check("database", lambda: threads.add(threading.current_thread().name))
    eventually_status(agent, "ok")
    assert threads and threading.current_thread().name not in threads
    assert all(name == "rpc-agent-check" for name in threads)


@pytest.mark.parametrize(
    ("name", "options", "error"),
    [
        ("", {}, ValueError),
        ("x" * 65, {}, ValueError),
        ("database", {"interval": 0}, ValueError),
        ("database", {"timeout": -1}, ValueError),
        ("database", {"interval": float("inf")}, ValueError),
    ],
)
def test_bad_checks_are_refused_by_name(
    name: str, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        new_agent().add_check(name, lambda: None, **options)


def test_a_name_is_registered_once_and_a_check_must_be_callable() -> None:
    agent = new_agent()
    agent.add_check("database", lambda: None)
    with pytest.raises(ValueError, match="registered already"):
        agent.add_check("database", lambda: None)
    with pytest.raises(TypeError, match="must be a function"):
        agent.add_check("cache", "SELECT 1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda app: WsgiMiddleware(app, settings=AgentSettings(auth_secret=TEST_SECRET)),
        lambda app: AsgiMiddleware(app, settings=AgentSettings(auth_secret=TEST_SECRET)),
    ],
    ids=["wsgi", "asgi"],
)
def test_the_middlewares_agent_takes_checks(make: Callable[[Any], Any]) -> None:
    middleware = make(lambda *args: None)
    middleware.agent.add_check("database", lambda: None, interval=FAST)
    assert eventually_status(middleware.agent, "ok")["checks"]["database"]["status"] == "ok"


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_the_agents_metrics_carry_each_checks_status_and_duration() -> None:
    registry = CollectorRegistry()
    metrics.instrument(registry)
    try:
        agent = new_agent()
        cache = Switch()
        cache.reason = "cache node gone"
        agent.add_check("ledger", lambda: None, interval=FAST)
        agent.add_check("cache-x", cache, interval=FAST, critical=False)
        eventually_status(agent, "degraded")
        assert registry.get_sample_value("forest_agent_check_ok", {"check": "ledger"}) == 1.0
        assert registry.get_sample_value("forest_agent_check_ok", {"check": "cache-x"}) == 0.0
        took = registry.get_sample_value("forest_agent_check_duration_seconds", {"check": "ledger"})
        assert took is not None and 0 <= took < 1
    finally:
        metrics.uninstrument(registry)
