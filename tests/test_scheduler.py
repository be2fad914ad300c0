"""ProbeScheduler and the process-wide scheduler every HealthCheckClient shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest

from rpc_datasource import HealthCheckClient
from rpc_datasource.scheduler import (
    DEFAULT_MAX_WORKERS,
    ProbeScheduler,
    ScheduledJob,
    configure_shared_scheduler,
    shared_scheduler,
)
from tests.support import (
    HEALTH_PATH,
    TEST_SECRET,
    HangingApp,
    agent_app,
    free_port,
    library_threads,
    live_server,
    wait_until,
)

WAIT_S = 10.0


@pytest.fixture
def scheduler() -> Iterator[ProbeScheduler]:
    running = ProbeScheduler(max_workers=4)
    try:
        yield running
    finally:
        running.stop()


def total_probes_reach(clients: list[HealthCheckClient], count: int) -> bool:
    return sum(client.stats().probes for client in clients) >= count


def each_probed(clients: list[HealthCheckClient], count: int) -> bool:
    return all(client.stats().probes >= count for client in clients)


def stop_all(clients: list[HealthCheckClient]) -> None:
    for client in clients:
        client.stop()


# --- ProbeScheduler --------------------------------------------------------------------------


def test_jobs_run_at_their_due_time_in_due_order(scheduler: ProbeScheduler) -> None:
    ran: list[tuple[str, float]] = []
    lock = threading.Lock()
    all_ran = threading.Event()

    def job(name: str) -> ScheduledJob:
        def run() -> None:
            with lock:
                ran.append((name, time.monotonic()))
                if len(ran) == 3:
                    all_ran.set()

        return ScheduledJob(run, name=name)

    delays = {"late": 0.15, "early": 0.05, "middle": 0.10}
    scheduled_at = time.monotonic()
    for name, delay in delays.items():
        scheduler.schedule(job(name), delay)

    assert all_ran.wait(WAIT_S)
    assert [name for name, _ in ran] == ["early", "middle", "late"]
    for name, at in ran:
        assert at - scheduled_at >= delays[name], f"{name} ran before it was due"


def test_a_cancelled_job_never_runs(scheduler: ProbeScheduler) -> None:
    cancelled_ran = threading.Event()
    sentinel_ran = threading.Event()
    doomed = ScheduledJob(cancelled_ran.set, name="doomed")
    scheduler.schedule(doomed, 0.05)
    doomed.cancel()
    scheduler.schedule(ScheduledJob(sentinel_ran.set, name="sentinel"), 0.15)

    assert sentinel_ran.wait(WAIT_S)
    assert not cancelled_ran.is_set()


def test_a_raising_job_does_not_stop_the_scheduler(
    scheduler: ProbeScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("job exploded on purpose")

    after = threading.Event()
    scheduler.schedule(ScheduledJob(explode, name="exploding"), 0.0)
    scheduler.schedule(ScheduledJob(after.set, name="after"), 0.05)

    assert after.wait(WAIT_S)
    assert "job exploded on purpose" in caplog.text


def test_lateness_reports_samples(scheduler: ProbeScheduler) -> None:
    empty = scheduler.lateness()
    assert empty.samples == 0

    done = threading.Semaphore(0)
    count = 5
    for index in range(count):
        scheduler.schedule(ScheduledJob(done.release, name=f"job-{index}"), 0.01 * index)
    for _ in range(count):
        assert done.acquire(timeout=WAIT_S)

    stats = scheduler.lateness()
    assert stats.samples == count
    assert 0.0 <= stats.p50_s <= stats.p99_s <= stats.max_s
    assert stats.max_s < WAIT_S


def test_a_stopped_scheduler_ends_its_threads_and_takes_no_more_jobs() -> None:
    running = ProbeScheduler(max_workers=2)
    ran = threading.Event()
    running.schedule(ScheduledJob(ran.set, name="once"), 0.0)
    assert ran.wait(WAIT_S)
    running.stop()
    assert wait_until(lambda: not library_threads("rpc-health"), 5.0)

    late = threading.Event()
    running.schedule(ScheduledJob(late.set, name="after-stop"), 0.0)  # ignored, no error
    assert not late.is_set()
    assert library_threads("rpc-health") == []


@pytest.mark.parametrize("max_workers", [0, -1])
def test_configure_shared_scheduler_refuses_no_workers(max_workers: int) -> None:
    before = shared_scheduler.max_workers
    with pytest.raises(ValueError, match="max_workers"):
        configure_shared_scheduler(max_workers=max_workers)
    assert shared_scheduler.max_workers == before


# --- the shared scheduler with real clients --------------------------------------------------


def test_clients_share_one_scheduler_that_ends_with_the_last_one() -> None:
    with live_server(agent_app()[0]) as server:
        url = server.url + HEALTH_PATH
        first = HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
        second = HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
        clients = [first, second]
        try:
            assert library_threads("rpc-health") == []
            first.start()
            running = shared_scheduler.current()
            assert running is not None
            second.start()
            assert shared_scheduler.current() is running
            assert wait_until(lambda: first.stats().probes >= 2 and second.stats().probes >= 2)
            assert library_threads("rpc-health").count("rpc-health-scheduler") == 1

            first.stop()
            assert shared_scheduler.current() is running  # one user left
            probes = second.stats().probes
            assert wait_until(lambda: second.stats().probes >= probes + 3)

            second.stop()
            assert shared_scheduler.current() is None
            assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
        finally:
            stop_all(clients)


def test_200_clients_use_a_bounded_set_of_threads() -> None:
    bound = 1 + DEFAULT_MAX_WORKERS
    with live_server(agent_app()[0]) as server:
        url = server.url + HEALTH_PATH
        clients = [
            HealthCheckClient(url, TEST_SECRET, polling_interval=0.2, timeout=1.0)
            for _ in range(200)
        ]
        try:
            for client in clients:
                client.start()
            counts: list[int] = []
            total = 0
            for _ in range(8):
                assert wait_until(partial(total_probes_reach, clients, total + 100))
                total = sum(c.stats().probes for c in clients)
                counts.append(len(library_threads("rpc-health")))
            assert max(counts) <= bound, counts
            assert min(counts) >= 2, counts  # the scheduler and at least one worker
        finally:
            stop_all(clients)
    assert all(client.closed for client in clients)
    assert shared_scheduler.current() is None
    assert wait_until(lambda: not library_threads("rpc-health"), 5.0), library_threads("rpc-health")


def test_a_configured_pool_bound_is_used_at_the_next_start() -> None:
    configure_shared_scheduler(max_workers=2)
    try:
        with live_server(agent_app()[0]) as server:
            url = server.url + HEALTH_PATH
            clients = [
                HealthCheckClient(url, TEST_SECRET, polling_interval=0.05, timeout=1.0)
                for _ in range(20)
            ]
            try:
                for client in clients:
                    client.start()
                counts: list[int] = []
                for round_ in range(1, 4):
                    assert wait_until(partial(each_probed, clients, round_))
                    counts.append(len(library_threads("rpc-health")))
                assert max(counts) <= 1 + 2, counts
            finally:
                stop_all(clients)
    finally:
        configure_shared_scheduler(max_workers=DEFAULT_MAX_WORKERS)
    assert shared_scheduler.max_workers == DEFAULT_MAX_WORKERS


def test_a_hanging_agent_does_not_hold_up_probes_to_a_healthy_one() -> None:
    hanging = HangingApp()
    with live_server(hanging.app) as slow_server, live_server(agent_app()[0]) as healthy_server:
        stuck = HealthCheckClient(
            slow_server.url + HEALTH_PATH, TEST_SECRET, polling_interval=0.05, timeout=1.0
        )
        healthy = HealthCheckClient(
            healthy_server.url + HEALTH_PATH, TEST_SECRET, polling_interval=0.05, timeout=1.0
        )
        clients = [stuck, healthy]
        try:
            stuck.start()
            healthy.start()
            assert hanging.entered.wait(WAIT_S)
            stuck_probes = stuck.stats().probes
            healthy_probes = healthy.stats().probes
            assert wait_until(lambda: healthy.stats().probes >= healthy_probes + 5)
            # All those healthy probes happened while the stuck probe was still in flight.
            assert stuck.stats().probes == stuck_probes
            assert healthy.stats().state == "up"
        finally:
            hanging.release.set()
            stop_all(clients)


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
            url.replace(f":{server.port}", f":{free_port()}"),
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
            other.stop()  # `last` is now the only user of the shared scheduler
            last.start()
            assert stopped.wait(WAIT_S), "stop() from inside on_server_down did not return"
            assert last.closed is True
            assert shared_scheduler.current() is None
            assert wait_until(lambda: not library_threads("rpc-health"), 5.0)
        finally:
            stop_all(clients)
