"""No false outage, and no held exit, from what the pair does not control on the master side:
a name server that hangs, callbacks that block, hooks that block the loop."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpc_datasource import HealthCheckClient
from rpc_datasource.aio import AsyncHealthCheckClient
from rpc_datasource.runtime import engine
from tests.support import TEST_SECRET, agent_app, closed_port, live_server, wait_until
from tests.support.local_dns import LocalNameServer, local_name_server, resolving_through
from tests.support.warehouse import Warehouse

pytestmark = pytest.mark.slow

INTERVAL_S = 0.5
TIMEOUT_S = 2.0
THRESHOLD = 3
# What is blocked below blocks for 60 s: a stop or an exit that waited on it would take that
# long. Anything far shorter proves it did not; this leaves a loaded machine its slowness.
EXIT_BOUND_S = 5.0
STOP_BOUND_S = 2.0  # stop() returns within 1 s (the contract), and a little for the machine


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalNameServer]:
    """A local name server that every new session asks, with lookups never cached, so that
    each probe on a new connection needs one."""
    monkeypatch.setattr(engine, "DNS_CACHE_TTL_S", 0)
    with local_name_server() as server, resolving_through(server, monkeypatch):
        yield server


class Downs:
    """Counts a client's down callbacks and when they came."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.fired = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.fired.set()


def test_names_whose_lookup_hangs_delay_no_other_agent(names: LocalNameServer) -> None:
    app, _ = agent_app()
    # werkzeug's server speaks HTTP/1.0 here: every probe opens a new connection, so every
    # probe of every client makes a lookup while the two hanging ones are in flight.
    with live_server(app) as server:
        healthy = [Downs() for _ in range(5)]
        hung = [Downs() for _ in range(2)]
        clients = [
            HealthCheckClient(
                f"http://healthy-{number}.test:{server.port}",
                TEST_SECRET,
                INTERVAL_S,
                THRESHOLD,
                TIMEOUT_S,
                on_server_down=downs,
            )
            for number, downs in enumerate(healthy)
        ] + [
            HealthCheckClient(
                f"http://hang-{number}.test:{server.port}",
                TEST_SECRET,
                INTERVAL_S,
                THRESHOLD,
                TIMEOUT_S,
                on_server_down=downs,
            )
            for number, downs in enumerate(hung)
        ]
        started = time.monotonic()
        for client in clients:
            client.start()
        try:
            bound = clients[-1].detection_bound_s
            assert all(downs.fired.wait(bound + 1.0) for downs in hung)
            assert wait_until(lambda: all(c.stats().probes >= 8 for c in clients[:5]), 15.0)
        finally:
            for client in clients:
                client.stop()
    for downs in hung:
        assert len(downs.times) == 1
        assert downs.times[0] - started <= bound
    assert all(not downs.times for downs in healthy)
    assert all(client.stats().failures == 0 for client in clients[:5])
    assert names.queries("healthy-0.test") >= 5
    assert names.queries("hang-0.test") >= THRESHOLD


def test_blocked_callbacks_delay_only_their_own_client(warehouse: Warehouse) -> None:
    release = threading.Event()
    blocked = threading.Semaphore(0)

    def block() -> None:
        blocked.release()
        release.wait(30.0)

    stuck = [
        HealthCheckClient(f"http://127.0.0.1:{closed_port()}", TEST_SECRET, 0.2, 1, 1.0, block)
        for _ in range(6)
    ]
    watched = Downs()
    client = HealthCheckClient(
        warehouse.url, TEST_SECRET, INTERVAL_S, THRESHOLD, TIMEOUT_S, on_server_down=watched
    )
    try:
        for each in [*stuck, client]:
            each.start()
        for _ in stuck:
            assert blocked.acquire(timeout=10.0), "a stuck client's down never came"
        assert wait_until(lambda: client.stats().state == "up", 10.0)
        killed = time.monotonic()
        warehouse.process.kill()
        assert watched.fired.wait(client.detection_bound_s + 1.0)
        assert watched.times[0] - killed <= client.detection_bound_s
    finally:
        for each in [*stuck, client]:
            each.stop()
        release.set()
    assert len(watched.times) == 1


def test_blocked_plain_callbacks_of_asyncio_clients_slow_neither_probes_nor_exit(
    names: LocalNameServer,
) -> None:
    app, _ = agent_app()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def block() -> None:
        entered.release()
        release.wait(30.0)

    async def main(port: int) -> tuple[list[int], float]:
        stuck = [
            AsyncHealthCheckClient(
                f"http://127.0.0.1:{closed_port()}", TEST_SECRET, 0.2, 1, 1.0, block
            )
            for _ in range(6)
        ]
        healthy = [
            AsyncHealthCheckClient(
                f"http://healthy-{number}.test:{port}", TEST_SECRET, 0.2, THRESHOLD, TIMEOUT_S
            )
            for number in range(3)
        ]
        for client in [*stuck, *healthy]:
            await client.start()
        for _ in stuck:
            assert await asyncio.to_thread(entered.acquire, True, 10.0)
        deadline = time.monotonic() + 10.0
        while min(client.stats().probes for client in healthy) < 10:
            assert time.monotonic() < deadline, "healthy agents were not probed"
            await asyncio.sleep(0.05)
        stopping = time.monotonic()
        for client in [*stuck, *healthy]:
            await client.stop()
        return [client.stats().failures for client in healthy], stopping

    try:
        with live_server(app) as server:
            failures, stopping = asyncio.run(main(server.port))
            returned = time.monotonic()
    finally:
        release.set()
    assert failures == [0, 0, 0]
    assert returned - stopping <= STOP_BOUND_S


def test_a_hook_that_blocks_the_loop_is_named_in_a_rate_limited_warning(
    warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    calls = threading.Semaphore(0)

    def slow_metrics_hook(_event: object) -> None:
        threading.Event().wait(0.15)  # the fault under test: a hook that blocks the loop
        calls.release()

    client = HealthCheckClient(warehouse.url, TEST_SECRET, 0.05, hooks=[slow_metrics_hook])
    with caplog.at_level(logging.WARNING, logger="rpc_common.hooks"):
        client.start()
        try:
            for _ in range(8):
                assert calls.acquire(timeout=10.0)
        finally:
            client.stop()
    warnings = [
        r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()
    ]
    assert 1 <= len(warnings) <= 3, warnings
    assert "slow_metrics_hook" in warnings[0]


SECRET = TEST_SECRET
EXIT_SCRIPT = """
import sys, threading
from functools import partial
from aiohttp import connector
from aiohttp.resolver import AsyncResolver
from rpc_datasource import HealthCheckClient

case, address, port, secret = sys.argv[1:5]
connector.DefaultResolver = partial(AsyncResolver, nameservers=[address])
entered = threading.Event()

def block():
    entered.set()
    threading.Event().wait(60)

if case == "lookup":
    client = HealthCheckClient(f"http://hang-1.test:{port}", secret, 0.2, 3, 30.0)
else:
    client = HealthCheckClient(f"http://127.0.0.1:{port}", secret, 0.2, 1, 1.0, block)
client.start()
print("started", flush=True)
if case == "callback":
    entered.wait(10)
    print("blocked", flush=True)
sys.stdin.readline()
client.stop()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("case", ["lookup", "callback"])
def test_the_process_exits_soon_after_stop(case: str, tmp_path: Path) -> None:
    with local_name_server() as server:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                EXIT_SCRIPT,
                case,
                server.address,
                str(closed_port()),
                TEST_SECRET,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            assert process.stdout.readline() == "started\n"
            if case == "lookup":
                assert wait_until(lambda: server.queries("hang-1.test") > 0, 10.0)
            else:
                assert process.stdout.readline() == "blocked\n"
            process.stdin.write("stop\n")
            process.stdin.flush()
            assert process.stdout.readline() == "stopped\n"
            stopped = time.monotonic()
            process.wait(timeout=30.0)
            assert time.monotonic() - stopped <= EXIT_BOUND_S
            assert process.returncode == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
