"""Readiness checks end to end: an agent in a real process (`tests.support.checks_app`, on the
project's runner) whose checks fail, hang and recover on demand, watched by real clients."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from rpc_datasource import HealthCheckClient, ProbeEvent
from rpc_datasource.instrumentation import metrics
from rpc_datasource.instrumentation.in_flight import probes_in_flight
from tests.support import HEALTH_PATH, TEST_SECRET, running_process, signed, wait_until

pytestmark = pytest.mark.slow

CHECK_INTERVAL_S = 0.1
CHECK_TIMEOUT_S = 0.5
DEADLINE_S = 10.0
# Real processes on a shared machine: a down may come this much after its bound.
SCHEDULER_SLACK_S = 0.5


@dataclass
class ChecksApp:
    """The app's port and the files that steer and record its checks."""

    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, check: str, mode: str) -> None:
        (self.directory / f"{check}.mode").write_text(mode)

    def runs(self, check: str) -> list[tuple[float, str]]:
        """Each finished run of `check`: when, and in which mode."""
        log = self.directory / "runs.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [
            (float(at), mode)
            for at, name, mode in (line.split() for line in lines)
            if name == check
        ]

    def health(self) -> requests.Response:
        return requests.get(self.url + HEALTH_PATH, headers=signed(HEALTH_PATH), timeout=5)


@pytest.fixture
def checks_app(tmp_path: Path) -> Iterator[ChecksApp]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = TEST_SECRET
    command = [
        sys.executable,
        *("-m", "tests.support.checks_app", str(tmp_path)),
        *(str(CHECK_INTERVAL_S), str(CHECK_TIMEOUT_S)),
    ]
    with running_process(command, env, tmp_path / "app.log") as (_, port):
        app = ChecksApp(port, tmp_path)
        assert wait_until(lambda: app.health().json()["status"] == "ok", DEADLINE_S)
        yield app


@dataclass
class Watched:
    client: HealthCheckClient
    events: list[tuple[float, ProbeEvent]]
    downs: list[float]
    recoveries: list[float]


@pytest.fixture
def watched(checks_app: ChecksApp) -> Iterator[Watched]:
    events: list[tuple[float, ProbeEvent]] = []
    downs: list[float] = []
    recoveries: list[float] = []
    client = HealthCheckClient(
        checks_app.url,
        TEST_SECRET,
        polling_interval=0.2,
        failure_threshold=2,
        timeout=2.0,
        on_server_down=lambda: downs.append(time.monotonic()),
        on_server_recovered=lambda: recoveries.append(time.monotonic()),
        hooks=(lambda event: events.append((time.monotonic(), event)),),
    )
    client.start()
    try:
        assert wait_until(lambda: client.stats().state == "up", DEADLINE_S)
        yield Watched(client, events, downs, recoveries)
    finally:
        client.stop()


def test_a_failing_critical_check_is_one_down_as_not_ready_then_one_recovery(
    checks_app: ChecksApp, watched: Watched
) -> None:
    began = time.monotonic()
    checks_app.set("database", "fail")
    assert wait_until(lambda: bool(watched.downs), DEADLINE_S)
    stats = watched.client.stats()
    assert (stats.state, stats.last_reason, stats.failing_checks) == (
        "down",
        "not_ready",
        ("database",),
    )
    assert "database refused the connection" in (stats.last_error or "")
    # The agent's own check runs every CHECK_INTERVAL_S: the outage is in its answers by then.
    bound = watched.client.detection_bound_s + CHECK_INTERVAL_S + SCHEDULER_SLACK_S
    assert watched.downs[0] - began <= bound

    fixed = time.monotonic()
    checks_app.set("database", "ok")
    assert wait_until(lambda: bool(watched.recoveries), DEADLINE_S)
    probes = watched.client.stats().probes
    assert wait_until(lambda: watched.client.stats().probes >= probes + 3, DEADLINE_S)
    assert (len(watched.downs), len(watched.recoveries)) == (1, 1)
    assert watched.recoveries[0] > fixed


def test_a_failing_non_critical_check_is_degraded_in_events_and_metrics_and_no_down(
    checks_app: ChecksApp, watched: Watched
) -> None:
    registry = CollectorRegistry()
    metrics.instrument(registry)

    def degraded_gauge() -> float | None:
        labels = {"agent": watched.client.name}
        return registry.get_sample_value("forest_datasource_agent_degraded", labels)

    try:
        checks_app.set("cache", "fail")
        assert wait_until(lambda: any(e.result.degraded for _, e in watched.events), DEADLINE_S)
        degraded = [event for _, event in watched.events if event.result.degraded]
        assert degraded[0].failing_checks == ("cache",)
        assert degraded[0].result.succeeded and degraded[0].reason is None
        assert watched.client.stats().failing_checks == ("cache",)
        assert wait_until(lambda: degraded_gauge() == 1.0, DEADLINE_S)
        assert checks_app.health().status_code == 200
        checks_app.set("cache", "ok")
        assert wait_until(lambda: degraded_gauge() == 0.0, DEADLINE_S)
    finally:
        metrics.uninstrument(registry)
    assert watched.downs == [] and watched.recoveries == []


def test_a_hung_check_is_failing_with_timeout_and_health_never_waits_for_it(
    checks_app: ChecksApp,
) -> None:
    checks_app.set("database", "hang")
    assert wait_until(
        lambda: checks_app.health().json()["checks"]["database"]["reason"] == "timeout",
        DEADLINE_S,
    )
    answer = checks_app.health()
    assert (answer.status_code, answer.json()["status"]) == (503, "unavailable")
    session = requests.Session()
    took = []
    for _ in range(200):
        started = time.perf_counter()
        reply = session.get(checks_app.url + HEALTH_PATH, headers=signed(HEALTH_PATH), timeout=5)
        took.append(time.perf_counter() - started)
        assert reply.status_code == 503
    session.close()
    # A probe that waited on the check would take its 60 s; the p99 is measured in bench/.
    assert max(took) < 5.0, sorted(took)[-5:]


def test_in_watch_mode_a_check_flip_answers_the_held_request_at_once(
    checks_app: ChecksApp,
) -> None:
    events: list[tuple[float, ProbeEvent]] = []
    seen_failure = threading.Event()

    def hook(event: ProbeEvent) -> None:
        events.append((time.time(), event))
        if not event.result.succeeded:
            seen_failure.set()

    client = HealthCheckClient(
        checks_app.url,
        TEST_SECRET,
        polling_interval=0.5,
        timeout=2.0,
        mode="watch",
        watch_wait=20.0,
        hooks=(hook,),
    )
    client.start()
    try:
        # The first probe is plain; right after it the held request goes out.
        assert wait_until(lambda: bool(events) and probes_in_flight.value == 1, DEADLINE_S)
        checks_app.set("database", "fail")
        assert seen_failure.wait(DEADLINE_S)
    finally:
        client.stop()
    failed_at, failure = next((at, e) for at, e in events if not e.result.succeeded)
    assert failure.reason == "not_ready"
    check_failed_at = min(at for at, mode in checks_app.runs("database") if mode == "fail")
    # Answered by the flip, not by the end of the 20 s hold.
    assert 0 <= failed_at - check_failed_at < 1.0


def test_a_hundred_masters_cost_the_check_nothing_more(checks_app: ChecksApp) -> None:
    clients = [
        HealthCheckClient(checks_app.url, TEST_SECRET, polling_interval=0.5, timeout=2.0)
        for _ in range(100)
    ]
    runs_before = len(checks_app.runs("database"))
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        assert wait_until(
            lambda: sum(client.stats().probes for client in clients) >= 500, DEADLINE_S * 3
        )
    finally:
        for client in clients:
            client.stop()
    elapsed = time.monotonic() - started
    runs = len(checks_app.runs("database")) - runs_before
    probes = sum(client.stats().probes for client in clients)
    assert probes >= 500
    # Its own interval, however many probes: at most one run per interval (and one in flight).
    assert runs <= elapsed / CHECK_INTERVAL_S + 2, (runs, elapsed, probes)


def test_a_client_that_knows_only_status_ok_reads_a_ready_agent_unchanged(
    checks_app: ChecksApp,
) -> None:
    body = checks_app.health().json()
    assert body["status"] == "ok"  # the original Ruby client's whole rule
    assert {"version", "instance_id", "schema_etag", "uptime_s"} <= set(body)
