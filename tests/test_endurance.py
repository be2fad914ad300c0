"""Endurance, the smoke version (the long one is `python -m bench endurance`): start/stop
cycles of a client and build/close cycles of a datasource leave no thread, fd or socket
behind, and a short soak keeps the fd count flat and traced memory bounded.

Every test watches one real warehouse process (`running_warehouse`, the command behind the
`warehouse` fixture, started once for the module), so none of the agent's sockets lives in
this process: every fd counted here is the client side's. The baseline is taken after a
warm-up cycle and a `gc.collect()`; the counts afterwards are polled until they are back to
it, with a deadline and without the collector (a socket only the collector would close is a
leak too), never after a fixed sleep.

The last test is a bug the soak found in the agent's runner: answers held back by Nagle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rpc_agent.servers.listening import listening_socket
from rpc_datasource import HealthCheckClient, RpcDatasource
from tests.support import TEST_SECRET, library_threads, wait_until
from tests.support.warehouse import HEALTH, Warehouse, running_warehouse

pytestmark = pytest.mark.slow

CYCLE_INTERVAL = 0.05  # the first probe comes within one interval of start()
PROBE_TIMEOUT = 2.0
FIRST_PROBE_DEADLINE = 10.0
SETTLE_DEADLINE = 5.0
SOAK_CLIENTS = 8
SOAK_INTERVAL = 0.02  # 8 clients + 1 datasource: up to 450 probes a second
SOAK_WARMUP_PROBES = 300
SOAK_PROBES = 1_000
SOAK_DEADLINE = 60.0
# Traced memory after the warm-up may grow by at most this much per probe. What grows without
# a leak is bounded by the number of watchers, not by the probes: the connection pool (a
# few KiB a connection), counters, a probe in flight at the moment of reading (the floor of
# several reads leaves most of that out). That measured 8-38 bytes a probe over 1,000 probes
# here. A probe that kept anything of its own costs more than 200 bytes: a hook keeping each
# `ProbeEvent` measured about 580 bytes a probe, one keeping each `ProbeResult` about 300,
# a kept response would be KiBs. So the bound is well under 1 KB and still catches a
# per-probe leak of any of the probe's own objects. A list growing by one pointer a probe
# (about 10 bytes) passes here; the benchmark's soak (70,000 probes) catches that one.
TRACED_GROWTH_PER_PROBE_LIMIT = 200
FLOOR_READS = 20
SELF_PIPE = 2


@dataclass(frozen=True)
class Census:
    """What this process holds: library threads, all threads, fds, sockets."""

    library: tuple[str, ...]
    threads: int
    fds: int
    sockets: int


def fd_links() -> list[str]:
    """Targets of this process's open fds (`socket:[…]` for a socket)."""
    links = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, closed meanwhile
            links.append(os.readlink(f"/proc/self/fd/{name}"))
    return links


def census() -> Census:
    links = fd_links()
    return Census(
        library=tuple(sorted(library_threads())),
        threads=threading.active_count(),
        fds=len(links),
        sockets=sum(link.startswith("socket:") for link in links),
    )


def holds_more_than(baseline: Census) -> bool:
    """Whether a library thread, or more threads, fds or sockets than the baseline, remain."""
    now = census()
    return (
        bool(now.library)
        or now.threads > baseline.threads
        or now.fds > baseline.fds
        or now.sockets > baseline.sockets
    )


def settled_baseline() -> Census:
    """The census once the library's threads are gone, after a collection (the warehouse's
    readiness probe, `requests.get`, leaves a socket that only the collector closes)."""
    assert wait_until(lambda: not library_threads(), SETTLE_DEADLINE)
    gc.collect()
    return census()


def assert_back_to(baseline: Census, what: str) -> None:
    """Back to the baseline within the deadline, without calling the collector: a socket
    that only `gc.collect()` would close is a leak too (the message tells them apart)."""
    if wait_until(lambda: not holds_more_than(baseline), SETTLE_DEADLINE):
        return
    now, links = census(), sorted(fd_links())
    gc.collect()
    raise AssertionError(
        f"after {what}: {now}, baseline {baseline}; fds {links}; after gc.collect(): {census()}"
    )


def traced_floor() -> int:
    """The least traced memory of several reads 5 ms apart: what stays, with little of what
    a probe in flight holds for a moment."""
    pause = threading.Event()
    least = tracemalloc.get_traced_memory()[0]
    for _ in range(FLOOR_READS - 1):
        pause.wait(0.005)
        least = min(least, tracemalloc.get_traced_memory()[0])
    return least


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """tracemalloc on for the block (left on if it already was)."""
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    try:
        yield
    finally:
        if not already:
            tracemalloc.stop()


def new_client(warehouse: Warehouse, interval: float = CYCLE_INTERVAL) -> HealthCheckClient:
    return HealthCheckClient(
        warehouse.url + HEALTH, TEST_SECRET, polling_interval=interval, timeout=PROBE_TIMEOUT
    )


def new_datasource(warehouse: Warehouse, interval: float = CYCLE_INTERVAL) -> RpcDatasource:
    return RpcDatasource.build(
        uri=warehouse.url,
        auth_secret=TEST_SECRET,
        health_check_interval=interval,
        health_check_timeout=PROBE_TIMEOUT,
    )


def each_probed(clients: list[HealthCheckClient]) -> bool:
    return all(client.stats().probes >= 1 for client in clients)


def client_cycle(warehouse: Warehouse) -> None:
    """start(), the first probe (a success), stop()."""
    client = new_client(warehouse)
    try:
        client.start()
        assert wait_until(lambda: client.stats().probes >= 1, FIRST_PROBE_DEADLINE)
        assert client.stats().failures == 0, client.stats()
    finally:
        client.stop()


def datasource_cycle(warehouse: Warehouse) -> None:
    """build() (reads the schema), the first probe (a success), close()."""
    datasource = new_datasource(warehouse)
    try:
        assert datasource.collections
        assert wait_until(lambda: datasource.health.stats().probes >= 1, FIRST_PROBE_DEADLINE)
        assert datasource.health.stats().failures == 0, datasource.health.stats()
    finally:
        datasource.close()


def clients_together(warehouse: Warehouse, count: int) -> None:
    """`count` clients started together, each probed once (a success), all stopped."""
    clients = [new_client(warehouse) for _ in range(count)]
    try:
        for client in clients:
            client.start()
        assert wait_until(lambda: each_probed(clients), FIRST_PROBE_DEADLINE)
        assert sum(client.stats().failures for client in clients) == 0
    finally:
        for client in clients:
            client.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """One `python -m examples.warehouse` for the module (a start and SIGTERM take ~2 s)."""
    workdir = tmp_path_factory.mktemp("endurance")
    with running_warehouse(workdir / "warehouse.db", workdir / "logs") as running:
        yield running


def test_50_start_stop_cycles_of_a_client_leave_no_thread_fd_or_socket(
    agent: Warehouse,
) -> None:
    client_cycle(agent)  # imports and first-use caches belong to the baseline
    baseline = settled_baseline()

    for _ in range(50):
        client_cycle(agent)

    assert_back_to(baseline, "50 start/stop cycles")


def test_20_build_close_cycles_of_a_datasource_leave_no_thread_fd_or_socket(
    agent: Warehouse,
) -> None:
    datasource_cycle(agent)
    baseline = settled_baseline()

    for _ in range(20):
        datasource_cycle(agent)

    assert_back_to(baseline, "20 build/close cycles")


def test_rounds_of_20_clients_started_together_leave_no_thread_fd_or_socket(
    agent: Warehouse,
) -> None:
    client_cycle(agent)
    baseline = settled_baseline()

    for _ in range(3):
        clients_together(agent, 20)

    assert_back_to(baseline, "3 rounds of 20 clients")


def test_a_soak_of_1000_probes_keeps_fds_flat_and_traced_memory_bounded(
    agent: Warehouse,
) -> None:
    datasource_cycle(agent)
    baseline = settled_baseline()
    watchers = SOAK_CLIENTS + 1
    sockets_seen: list[int] = []

    def probes() -> int:
        sockets_seen.append(census().sockets)
        return sum(c.stats().probes for c in clients) + datasource.health.stats().probes

    with tracing():
        clients = [new_client(agent, SOAK_INTERVAL) for _ in range(SOAK_CLIENTS)]
        datasource = new_datasource(agent, SOAK_INTERVAL)
        try:
            for client in clients:
                client.start()
            assert wait_until(lambda: probes() >= SOAK_WARMUP_PROBES, SOAK_DEADLINE)
            gc.collect()
            traced_before, probes_before = traced_floor(), probes()
            sockets_seen.clear()

            assert wait_until(lambda: probes() >= probes_before + SOAK_PROBES, SOAK_DEADLINE)

            gc.collect()
            traced_after, probes_after = traced_floor(), probes()
            failures = sum(c.stats().failures for c in clients)
            failures += datasource.health.stats().failures
        finally:
            for client in clients:
                client.stop()
            datasource.close()

    assert failures == 0
    # Over what the process held before (sockets an earlier test of this worker left are not
    # the soak's): the loop's self-pipe (a socket pair) and at most one connection per
    # watcher, kept alive in the pool between probes, one more while a closed one is
    # replaced; a socket that leaked per probe would show hundreds here.
    assert max(sockets_seen) - baseline.sockets <= SELF_PIPE + 2 * watchers, (
        baseline.sockets,
        sockets_seen,
    )
    assert max(sockets_seen) - min(sockets_seen) <= watchers, sockets_seen
    growth = traced_after - traced_before
    per_probe = growth / (probes_after - probes_before)
    assert per_probe < TRACED_GROWTH_PER_PROBE_LIMIT, (
        f"traced memory grew {growth} bytes over {probes_after - probes_before} probes "
        f"({per_probe:.0f} bytes a probe)"
    )
    assert_back_to(baseline, "the soak")


# --- found by the soak: the runner's connections wait on Nagle ---------------------------


def test_the_runners_accepted_connections_send_at_once() -> None:
    """Connections accepted on the runner's listening socket the way uvicorn accepts them
    (`loop.create_server(sock=...)`) have TCP_NODELAY set."""
    listener = listening_socket("127.0.0.1", 0)
    nodelay: list[int] = []

    def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    async def connect_once() -> None:
        server = await asyncio.start_server(accepted, sock=listener)
        async with server:
            host, port = listener.getsockname()[:2]
            reader, writer = await asyncio.open_connection(host, port)
            await asyncio.wait_for(reader.read(), 5.0)  # EOF: the server has seen it
            writer.close()
            await writer.wait_closed()

    try:
        asyncio.run(connect_once())
    finally:
        listener.close()
    assert nodelay == [1]
