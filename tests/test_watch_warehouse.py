"""Watch mode (and polling's view of a graceful stop) against the real warehouse process."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from examples.warehouse.database import add_column
from rpc_datasource import (
    DatasourceSettings,
    FailureReason,
    HealthCheckClient,
    ProbeEvent,
    RpcDatasource,
)
from tests.support import TEST_SECRET, wait_until
from tests.support.warehouse import HEALTH, Warehouse, running_warehouse

pytestmark = pytest.mark.slow

DEADLINE_S = 15.0
# A polling interval no probe reaches during a test: only held requests can see a change.
NEVER_POLLED_S = 60.0


class EventLog:
    """A probe hook that keeps every event with the monotonic time it arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[float, ProbeEvent]] = []

    def __call__(self, event: ProbeEvent) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event))

    def where(self, *, went_down: bool = False, recovered: bool = False) -> list[ProbeEvent]:
        with self._lock:
            return [
                event
                for _, event in self.events
                if (went_down and event.went_down) or (recovered and event.recovered)
            ]

    def failures(self) -> list[tuple[float, ProbeEvent]]:
        with self._lock:
            return [(at, event) for at, event in self.events if not event.result.succeeded]

    def successes(self) -> int:
        with self._lock:
            return sum(1 for _, event in self.events if event.result.succeeded)


def watch_client(url: str, log: EventLog, **options: Any) -> HealthCheckClient:
    settings: dict[str, Any] = {
        "polling_interval": NEVER_POLLED_S,
        "failure_retry_interval": 0.2,
        "failure_threshold": 3,
        "timeout": 1.0,
        "mode": "watch",
        "watch_wait": 5.0,
        "hooks": [log],
        **options,
    }
    return HealthCheckClient(url + HEALTH, TEST_SECRET, **settings)


def up_and_watching(client: HealthCheckClient, log: EventLog) -> None:
    """Started, and past the first probes: a held request is now open."""
    client.start()
    assert wait_until(lambda: log.successes() >= 2, DEADLINE_S), "the client never came up"


def assert_sigterm_is_one_shutting_down(warehouse: Warehouse, log: EventLog) -> None:
    """SIGTERM the warehouse: one down, seen as its 503 `shutting_down`, and a clean exit."""
    signalled = time.monotonic()
    warehouse.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: bool(log.where(went_down=True)), DEADLINE_S)
    assert warehouse.process.wait(DEADLINE_S) == 0
    downs = log.where(went_down=True)
    assert len(downs) == 1
    assert downs[0].reason is FailureReason.SHUTTING_DOWN, downs[0].result.cause
    assert log.failures()[0][0] - signalled < DEADLINE_S


def test_sigterm_is_seen_at_once_by_a_held_request(warehouse: Warehouse) -> None:
    log = EventLog()
    client = watch_client(warehouse.url, log, polling_interval=NEVER_POLLED_S)
    try:
        up_and_watching(client, log)
        # No poll is due for a minute: only the held request, answered 503, can see it.
        assert_sigterm_is_one_shutting_down(warehouse, log)
    finally:
        client.stop()


def test_kill_9_cuts_the_held_request_and_the_re_probes_declare_down(
    warehouse: Warehouse,
) -> None:
    log = EventLog()
    client = watch_client(warehouse.url, log, failure_threshold=3)
    try:
        up_and_watching(client, log)
        warehouse.process.kill()
        warehouse.process.wait(DEADLINE_S)
        assert wait_until(lambda: bool(log.where(went_down=True)), DEADLINE_S)
    finally:
        client.stop()
    failures = log.failures()
    # The first failure came from the cut held request, long before any poll was due.
    assert failures[0][1].reason in (FailureReason.CONNECTION, FailureReason.REFUSED)
    assert len(log.where(went_down=True)) == 1
    down_at = next(at for at, event in failures if event.went_down)
    # Down after N-1 re-probes at the retry interval, not after a polling interval.
    assert down_at - failures[0][0] < NEVER_POLLED_S / 2


def test_sigstop_times_the_held_request_out_and_sigcont_recovers(
    warehouse: Warehouse,
) -> None:
    log = EventLog()
    client = watch_client(
        warehouse.url,
        log,
        polling_interval=0.5,  # while down: how soon SIGCONT is seen
        watch_wait=1.0,
        timeout=0.5,
        failure_threshold=2,
    )
    try:
        up_and_watching(client, log)
        os.kill(warehouse.process.pid, signal.SIGSTOP)
        try:
            assert wait_until(lambda: bool(log.where(went_down=True)), DEADLINE_S)
        finally:
            os.kill(warehouse.process.pid, signal.SIGCONT)
        assert wait_until(lambda: bool(log.where(recovered=True)), DEADLINE_S)
        assert wait_until(lambda: log.successes() >= 4, DEADLINE_S)
    finally:
        client.stop()
    downs = log.where(went_down=True)
    assert len(downs) == 1
    assert downs[0].reason is FailureReason.TIMEOUT
    assert len(log.where(recovered=True)) == 1


def test_a_restart_with_a_new_column_is_one_reload_in_watch_mode(
    db_path: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    reloads: list[dict[str, Any]] = []
    reloaded = threading.Event()
    recovered = threading.Event()

    def on_schema_change(schema: dict[str, Any]) -> None:
        reloads.append(schema)
        reloaded.set()

    with running_warehouse(db_path, logs) as first:
        port = first.port
        settings = DatasourceSettings(
            rpc_uri=first.url,
            auth_secret=TEST_SECRET,
            health_check_interval=0.5,  # while down: how soon the restart is seen
            health_check_timeout=1.0,
            health_check_mode="watch",
            health_check_watch_wait=1.0,  # a probe a second while nothing changes
        )
        datasource = RpcDatasource.connect(
            settings, on_schema_change=on_schema_change, on_server_recovered=recovered.set
        )
        assert first.stop() == 0  # a redeploy: a graceful stop
    try:
        add_column(db_path, "products", "color", "TEXT")
        with running_warehouse(db_path, logs, port=port):
            assert reloaded.wait(DEADLINE_S)
            assert recovered.is_set()
            fields = {
                field["name"]
                for collection in datasource.collections
                if collection["name"] == "products"
                for field in collection["fields"]
            }
            assert "color" in fields
            probes = datasource.health.stats().probes
            assert wait_until(lambda: datasource.health.stats().probes >= probes + 2)
    finally:
        datasource.close()
    assert len(reloads) == 1
    assert datasource.reloads == 1


@pytest.mark.parametrize("trial", range(3))
def test_a_poller_sees_a_graceful_stop_as_503_during_the_drain(
    warehouse: Warehouse, trial: int
) -> None:
    log = EventLog()
    client = HealthCheckClient(
        warehouse.url + HEALTH,
        TEST_SECRET,
        polling_interval=0.5,
        failure_threshold=3,
        timeout=1.0,
        hooks=[log],
    )
    try:
        client.start()
        assert wait_until(lambda: log.successes() >= 1, DEADLINE_S)
        assert_sigterm_is_one_shutting_down(warehouse, log)
    finally:
        client.stop()


def test_held_watches_up_to_the_bound_never_starve_plain_requests(
    db_path: Path, tmp_path: Path
) -> None:
    watchers = 20  # more than the runner's 16 threads for ordinary traffic
    settings = {"FOREST_HEALTH_MAX_WATCHERS": str(watchers), "FOREST_HEALTH_MAX_WAIT": "30"}
    with running_warehouse(db_path, tmp_path / "logs", settings=settings) as running:
        etag = running.get(HEALTH).headers["ETag"]
        target = f"{HEALTH}?wait=20"
        answered: list[int] = []

        def watch() -> None:
            answered.append(running.get(target, **{"If-None-Match": etag}).status_code)

        held = [threading.Thread(target=watch, name=f"test-watch-{i}") for i in range(watchers)]
        for thread in held:
            thread.start()
        try:
            # While every watch is held, plain probes keep being answered at once.
            for _ in range(10):
                started = time.monotonic()
                assert running.get(HEALTH).status_code == 200
                assert time.monotonic() - started < 2.0
            assert answered == []  # the watches were held all that time
        finally:
            running.process.send_signal(signal.SIGTERM)  # answers every held watch at once
            for thread in held:
                thread.join(DEADLINE_S)
    assert answered == [503] * watchers
