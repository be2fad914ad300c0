"""The shared watcher engine with real clients and servers on 127.0.0.1: threads, isolation
between agents, stop() that returns at once, and callbacks that run off the loop, in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest

from rpc_datasource import HealthCheckClient, ProbeEvent
from rpc_datasource.runtime.engine import (
    CALLBACK_THREAD_PREFIX,
    ENGINE_THREAD_NAME,
    shared_engine,
)
from tests.support import (
    HEALTH_PATH,
    TEST_SECRET,
    HangingApp,
    agent_app,
    closed_port,
    free_port,
    library_threads,
    live_server,
    wait_until,
)

pytestmark = pytest.mark.slow

WAIT_S = 10.0
# The contract: at most 4 threads probe, however many clients.
PROBING_THREAD_BOUND = 4


def each_probed(clients: list[HealthCheckClient], count: int) -> bool:
    return all(client.stats().probes >= count for client in clients)


def stop_all(clients: list[HealthCheckClient]) -> None:
    for client in clients:
        client.stop()


@contextmanager
def hanging_server() -> Iterator[tuple[HangingApp, str]]:
    """A server whose health route never answers until the test ends; its health URL."""
    hanging = HangingApp()
    with live_server(hanging.app) as server:
        try:
            yield hanging, server.url + HEALTH_PATH
        finally:
            hanging.release.set()


# --- the engine on its own -------------------------------------------------------------------


def test_run_returns_a_coroutines_result_and_bounds_its_wait() -> None:
    engine = shared_engine.acquire()
    try:

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        async def never() -> None:
            await asyncio.get_running_loop().create_future()

        assert engine.run(answer(), timeout=5.0) == 42
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            engine.run(never(), timeout=0.2)
        assert time.monotonic() - started < 5.0
    finally:
        shared_engine.release()
    assert wait_until(lambda: not library_threads("rpc-health"), 5.0)


def test_a_cancelled_task_ends_and_a_raising_one_leaves_the_others_running() -> None:
    engine = shared_engine.acquire()
    ticks: list[int] = []
    try:

        async def ticker() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)

        async def explode() -> None:
            raise RuntimeError("task exploded on purpose")

        running = engine.spawn(ticker())
        engine.spawn(explode())
        assert wait_until(lambda: len(ticks) >= 5)
        running.cancel()
        after_cancel = len(ticks)
        assert engine.run(asyncio.sleep(0.05), timeout=5.0) is None  # the loop still runs
        assert len(ticks) == after_cancel
    finally:
        shared_engine.release()


# --- the shared engine with real clients -----------------------------------------------------


def test_clients_share_one_engine_that_ends_with_the_last_one() -> None:
    with live_server(agent_app()[0]) as server:
        url = server.url + HEALTH_PATH
        first = HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
        second = HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
        clients = [first, second]
        try:
            assert library_threads("rpc-health") == []
            first.start()
            running = shared_engine.current()
            assert running is not None
            second.start()
            assert shared_engine.current() is running
            assert wait_until(lambda: first.stats().probes >= 2 and second.stats().probes >= 2)
            assert library_threads("rpc-health").count(ENGINE_THREAD_NAME) == 1

            first.stop()
            assert shared_engine.current() is running  # one user left
            probes = second.stats().probes
            assert wait_until(lambda: second.stats().probes >= probes + 3)

            second.stop()
            assert shared_engine.current() is None
            assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
        finally:
            stop_all(clients)


def test_200_clients_and_20_hung_ones_use_at_most_4_probing_threads() -> None:
    with live_server(agent_app()[0]) as server, hanging_server() as (_, hung_url):
        url = server.url + HEALTH_PATH
        clients = [
            HealthCheckClient(url, TEST_SECRET, polling_interval=0.2, timeout=1.0)
            for _ in range(200)
        ] + [
            HealthCheckClient(hung_url, TEST_SECRET, polling_interval=0.2, timeout=1.0)
            for _ in range(20)
        ]
        try:
            for client in clients:
                client.start()
            counts: list[int] = []
            for round_ in range(1, 4):
                assert wait_until(partial(each_probed, clients, round_))
                counts.append(len(library_threads("rpc-health")))
            assert max(counts) <= PROBING_THREAD_BOUND, counts
            assert min(counts) >= 1, counts
        finally:
            stop_all(clients)
    assert all(client.closed for client in clients)
    assert shared_engine.current() is None
    assert wait_until(lambda: not library_threads("rpc-health"), 5.0), library_threads("rpc-health")


def test_hanging_agents_do_not_hold_up_probes_to_a_healthy_one() -> None:
    with hanging_server() as (hanging, hung_url), live_server(agent_app()[0]) as healthy_server:
        stuck = [
            HealthCheckClient(hung_url, TEST_SECRET, polling_interval=0.05, timeout=5.0)
            for _ in range(30)
        ]
        healthy = HealthCheckClient(
            healthy_server.url + HEALTH_PATH, TEST_SECRET, polling_interval=0.05, timeout=1.0
        )
        clients = [*stuck, healthy]
        try:
            for client in clients:
                client.start()
            assert hanging.entered.wait(WAIT_S)
            assert wait_until(lambda: all(client.stats().probes == 0 for client in stuck))
            healthy_probes = healthy.stats().probes
            assert wait_until(lambda: healthy.stats().probes >= healthy_probes + 10)
            # All those healthy probes happened while 30 stuck probes were in flight.
            assert all(client.stats().probes == 0 for client in stuck)
            assert healthy.stats().state == "up"
        finally:
            stop_all(clients)


def test_stop_returns_at_once_while_probes_hang() -> None:
    with hanging_server() as (hanging, hung_url):
        clients = [
            HealthCheckClient(hung_url, TEST_SECRET, polling_interval=0.05, timeout=30.0)
            for _ in range(20)
        ]
        try:
            for client in clients:
                client.start()
            assert hanging.entered.wait(WAIT_S)
            started = time.monotonic()
            stop_all(clients)  # one after another, each with a probe in flight
            took = time.monotonic() - started
            assert all(client.closed for client in clients)
            # Far below one probe's 30 s timeout: in-flight probes were cancelled.
            assert took < 5.0, f"stopping 20 hung clients took {took:.2f} s"
            assert shared_engine.current() is None
        finally:
            stop_all(clients)


# --- callbacks -------------------------------------------------------------------------------


def test_callbacks_run_on_the_callback_pool_in_order_per_client() -> None:
    seen: list[tuple[str, str]] = []
    recovered = threading.Event()
    app, agent = agent_app()
    port = free_port()

    def record(name: str) -> None:
        seen.append((name, threading.current_thread().name))
        if name == "recovered":
            recovered.set()

    client = HealthCheckClient(
        f"http://127.0.0.1:{port}{HEALTH_PATH}",
        TEST_SECRET,
        polling_interval=0.05,
        timeout=1.0,
        failure_threshold=1,
        on_server_down=partial(record, "down"),
        on_server_recovered=partial(record, "recovered"),
    )
    try:
        client.start()
        assert wait_until(lambda: bool(seen))
        with live_server(app, port=port):
            assert recovered.wait(WAIT_S)
    finally:
        client.stop()
    assert [name for name, _ in seen] == ["down", "recovered"]
    assert all(thread.startswith(CALLBACK_THREAD_PREFIX) for _, thread in seen), seen
    assert agent.instance_id


def test_stop_returns_while_a_callback_blocks_and_no_callback_starts_after() -> None:
    release = threading.Event()
    entered = threading.Event()
    later_calls: list[str] = []
    lock = threading.Lock()

    def blocking_down() -> None:
        entered.set()
        with lock:  # the application's lock, which stop() is called under below
            release.wait(30)

    client = HealthCheckClient(
        f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}",
        TEST_SECRET,
        polling_interval=0.05,
        timeout=1.0,
        failure_threshold=1,
        on_server_down=blocking_down,
        on_server_recovered=lambda: later_calls.append("recovered"),
    )
    try:
        client.start()
        assert entered.wait(WAIT_S)
        stopped = threading.Event()

        def stop_under_the_lock() -> None:
            client.stop()  # while the callback runs, and with a lock it may need
            stopped.set()

        started = time.monotonic()
        stopper = threading.Thread(target=stop_under_the_lock, name="test-stopper")
        stopper.start()
        assert stopped.wait(WAIT_S), "stop() waited on a running callback"
        took = time.monotonic() - started
        assert took < 1.0, f"stop() took {took:.2f} s"
        assert shared_engine.current() is None
    finally:
        release.set()
        client.stop()
    assert wait_until(lambda: not library_threads(CALLBACK_THREAD_PREFIX), 5.0)
    assert later_calls == []


def test_a_slow_callback_of_one_client_does_not_delay_another_clients_callbacks() -> None:
    release = threading.Event()
    fast_down = threading.Event()
    slow_entered = threading.Event()

    def slow() -> None:
        slow_entered.set()
        release.wait(30)

    url = f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}"
    options = {"polling_interval": 0.05, "timeout": 1.0, "failure_threshold": 1}
    slow_client = HealthCheckClient(url, TEST_SECRET, on_server_down=slow, **options)  # type: ignore[arg-type]
    fast_client = HealthCheckClient(url, TEST_SECRET, on_server_down=fast_down.set, **options)  # type: ignore[arg-type]
    try:
        slow_client.start()
        assert slow_entered.wait(WAIT_S)
        fast_client.start()
        assert fast_down.wait(WAIT_S)
    finally:
        release.set()
        stop_all([slow_client, fast_client])


def test_stopping_the_last_client_from_inside_a_callback_does_not_deadlock() -> None:
    stopped = threading.Event()
    clients: list[HealthCheckClient] = []

    def stop_the_last() -> None:
        clients[1].stop()
        stopped.set()

    with live_server(agent_app()[0]) as server:
        url = server.url + HEALTH_PATH
        other = HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
        last = HealthCheckClient(
            url.replace(f":{server.port}", f":{closed_port()}"),
            TEST_SECRET,
            polling_interval=0.05,
            timeout=1.0,
            failure_threshold=2,
            on_server_down=stop_the_last,
        )
        clients.extend([other, last])
        try:
            other.start()
            assert wait_until(lambda: other.stats().probes >= 1)
            other.stop()  # `last` is now the only user of the shared engine
            last.start()
            assert stopped.wait(WAIT_S), "stop() from inside on_server_down did not return"
            assert last.closed is True
            assert shared_engine.current() is None
            assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
        finally:
            stop_all(clients)


def test_a_hook_that_stops_its_own_client_on_the_loop_does_not_deadlock() -> None:
    client: HealthCheckClient
    seen: list[ProbeEvent] = []

    def stop_on_first(event: ProbeEvent) -> None:
        seen.append(event)
        client.stop()

    with live_server(agent_app()[0]) as server:
        client = HealthCheckClient(
            server.url + HEALTH_PATH,
            TEST_SECRET,
            polling_interval=0.05,
            timeout=1.0,
            hooks=[stop_on_first],
        )
        client.start()
        assert wait_until(lambda: client.closed)
        assert wait_until(lambda: shared_engine.current() is None)
        assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
    assert len(seen) == 1
