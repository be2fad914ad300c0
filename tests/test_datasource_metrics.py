"""`rpc_datasource.instrumentation.metrics`: Prometheus metrics fed by the probe and schema hooks.

Most tests are pure: events built by hand, or by driving a real `HealthStateMachine` so that
the states and actions are the ones a client would produce, are handed to a `DatasourceMetrics`
on a fresh registry and the values read back with `get_sample_value`. One test instruments the
process and watches a real agent, then stops its server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rpc_datasource import HealthCheckClient
from rpc_datasource.health.events import (
    ProbeEvent,
    SchemaEvent,
    SchemaOutcome,
    get_probe_hooks,
    get_schema_hooks,
    probe_hooks,
    schema_hooks,
    set_probe_hooks,
    set_schema_hooks,
)
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import (
    Action,
    FailureReason,
    HealthState,
    ProbeResult,
)
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.instrumentation.in_flight import probes_in_flight
from rpc_datasource.instrumentation.metrics import DatasourceMetrics, instrument, uninstrument
from rpc_datasource.runtime.watcher import HealthWatcher
from rpc_datasource.transport.probe import ProbeOutcome
from tests.support import HEALTH_PATH, TEST_SECRET, agent_app, start_server, wait_until

AGENT = "agent-a"
OTHER = "agent-b"

UP = "forest_datasource_agent_up"
PROBES = "forest_datasource_probes_total"
FAILURES = "forest_datasource_probe_failures_total"
DURATION = "forest_datasource_probe_duration_seconds"
LATENESS = "forest_datasource_probe_lateness_seconds"
TRANSITIONS = "forest_datasource_state_transitions_total"
RESTARTS = "forest_datasource_agent_restarts_total"
SCHEMA_REQUESTS = "forest_datasource_schema_requests_total"
SCHEMA_RELOADS = "forest_datasource_schema_reloads_total"
SCHEMA_INFO = "forest_datasource_schema_info"
IN_FLIGHT = "forest_datasource_probes_in_flight"

OK = ProbeResult.ok("instance-1", "schema-1")
REFUSED = ProbeResult.failed(FailureReason.REFUSED, "connection refused")
TIMEOUT = ProbeResult.failed(FailureReason.TIMEOUT, "timed out")
STOPPING = ProbeResult.shutting_down()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class Prober:
    """One agent's probes as a client makes them: each result goes through the watcher's
    `observe` (a real state machine), which hands the event to the metrics' hook."""

    def __init__(
        self, metrics: DatasourceMetrics, agent: str = AGENT, failure_threshold: int = 2
    ) -> None:
        policy = ProbePolicy(polling_interval=1.0, failure_threshold=failure_threshold)
        self.watcher = HealthWatcher(agent, policy, never_probed, (metrics.observe_probe,))

    def probe(
        self, result: ProbeResult, latency_s: float | None = 0.01, lateness_s: float = 0.0
    ) -> ProbeEvent:
        return self.watcher.observe(result, latency_s, lateness_s)


async def never_probed(request: ProbeRequest) -> ProbeOutcome:
    raise AssertionError("these tests feed outcomes to observe(); nothing probes")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> DatasourceMetrics:
    return DatasourceMetrics(registry)


@pytest.fixture
def prober(metrics: DatasourceMetrics) -> Prober:
    return Prober(metrics)


@pytest.fixture
def saved_hooks() -> Iterator[tuple[tuple[object, ...], tuple[object, ...]]]:
    """The process-wide hooks as they were; put back after the test whatever it did."""
    probe_hooks, schema_hooks = get_probe_hooks(), get_schema_hooks()
    yield probe_hooks, schema_hooks
    set_probe_hooks(probe_hooks)
    set_schema_hooks(schema_hooks)


@pytest.fixture
def instrumented(
    saved_hooks: tuple[tuple[object, ...], tuple[object, ...]],
) -> Iterator[CollectorRegistry]:
    """A fresh registry that the test may instrument; uninstrumented (idempotent) after it."""
    fresh = CollectorRegistry()
    yield fresh
    uninstrument(fresh)


# --- agent_up, probes, failures -------------------------------------------------------------


def test_agent_up_is_absent_until_a_state_is_known_then_follows_it(
    registry: CollectorRegistry, prober: Prober
) -> None:
    assert value(registry, UP, agent=AGENT) is None

    event = prober.probe(REFUSED)  # 1 failure of 2: still unknown
    assert event.state_after is HealthState.UNKNOWN
    assert value(registry, UP, agent=AGENT) is None
    assert value(registry, PROBES, agent=AGENT) == 1.0

    event = prober.probe(REFUSED)  # the threshold: down
    assert event.state_after is HealthState.DOWN
    assert value(registry, UP, agent=AGENT) == 0.0

    event = prober.probe(OK)
    assert event.state_after is HealthState.UP
    assert value(registry, UP, agent=AGENT) == 1.0

    prober.probe(STOPPING)  # shutting_down: down at once
    assert value(registry, UP, agent=AGENT) == 0.0
    assert value(registry, PROBES, agent=AGENT) == 4.0


def test_a_first_success_sets_agent_up_to_1(registry: CollectorRegistry, prober: Prober) -> None:
    prober.probe(OK)
    assert value(registry, UP, agent=AGENT) == 1.0
    assert value(registry, PROBES, agent=AGENT) == 1.0


def test_every_failure_reason_starts_at_0_at_first_sight_then_counts(
    registry: CollectorRegistry, prober: Prober
) -> None:
    assert value(registry, FAILURES, agent=AGENT, reason="refused") is None
    prober.probe(OK)
    assert {
        reason.value: value(registry, FAILURES, agent=AGENT, reason=reason)
        for reason in FailureReason
    } == {reason.value: 0.0 for reason in FailureReason}
    assert value(registry, RESTARTS, agent=AGENT) == 0.0
    assert value(registry, SCHEMA_RELOADS, agent=AGENT) == 0.0

    prober.probe(REFUSED)
    prober.probe(REFUSED)
    prober.probe(TIMEOUT)
    prober.probe(STOPPING)
    counts = {
        reason.value: value(registry, FAILURES, agent=AGENT, reason=reason)
        for reason in FailureReason
    }
    assert counts == {
        **{reason.value: 0.0 for reason in FailureReason},
        "refused": 2.0,
        "timeout": 1.0,
        "shutting_down": 1.0,
    }
    assert value(registry, PROBES, agent=AGENT) == 5.0


# --- histograms ----------------------------------------------------------------------------


def test_duration_histogram_observes_each_latency_but_not_a_missing_one(
    registry: CollectorRegistry, prober: Prober
) -> None:
    prober.probe(OK, latency_s=0.02)
    prober.probe(OK, latency_s=0.3)
    prober.probe(TIMEOUT, latency_s=None)
    assert value(registry, PROBES, agent=AGENT) == 3.0
    assert value(registry, f"{DURATION}_count", agent=AGENT) == 2.0
    assert value(registry, f"{DURATION}_sum", agent=AGENT) == pytest.approx(0.32)
    assert value(registry, f"{DURATION}_bucket", agent=AGENT, le="0.01") == 0.0
    assert value(registry, f"{DURATION}_bucket", agent=AGENT, le="0.025") == 1.0
    assert value(registry, f"{DURATION}_bucket", agent=AGENT, le="0.25") == 1.0
    assert value(registry, f"{DURATION}_bucket", agent=AGENT, le="0.5") == 2.0
    assert value(registry, f"{DURATION}_bucket", agent=AGENT, le="+Inf") == 2.0


def test_lateness_histogram_counts_every_probe_and_early_ones_as_0(
    registry: CollectorRegistry, metrics: DatasourceMetrics
) -> None:
    Prober(metrics, AGENT).probe(OK, lateness_s=-0.5)
    Prober(metrics, OTHER).probe(OK, lateness_s=0.003)
    Prober(metrics, AGENT).probe(REFUSED, latency_s=None, lateness_s=0.2)
    # One histogram for the process, no agent label.
    assert value(registry, f"{LATENESS}_count") == 3.0
    assert value(registry, f"{LATENESS}_sum") == pytest.approx(0.203)
    assert value(registry, f"{LATENESS}_bucket", le="0.001") == 1.0  # the early probe, as 0
    assert value(registry, f"{LATENESS}_bucket", le="0.005") == 2.0
    assert value(registry, f"{LATENESS}_bucket", le="0.1") == 2.0
    assert value(registry, f"{LATENESS}_bucket", le="0.25") == 3.0


# --- transitions and restarts --------------------------------------------------------------


def test_transitions_count_the_state_entered_only_on_a_change(
    registry: CollectorRegistry, prober: Prober
) -> None:
    def transitions() -> dict[str, float | None]:
        return {
            state.value: value(registry, TRANSITIONS, agent=AGENT, state=state)
            for state in HealthState
        }

    prober.probe(REFUSED)  # unknown -> unknown
    assert transitions() == {"unknown": None, "up": None, "down": None}
    prober.probe(REFUSED)  # -> down
    prober.probe(REFUSED)  # down -> down
    prober.probe(REFUSED)
    assert transitions() == {"unknown": None, "up": None, "down": 1.0}
    prober.probe(OK)  # -> up
    prober.probe(OK)
    prober.probe(OK)
    assert transitions() == {"unknown": None, "up": 1.0, "down": 1.0}
    prober.probe(STOPPING)  # -> down
    prober.probe(OK)  # -> up
    assert transitions() == {"unknown": None, "up": 2.0, "down": 2.0}


def test_restarts_count_new_instances_only(registry: CollectorRegistry, prober: Prober) -> None:
    first = prober.probe(ProbeResult.ok("instance-1"))
    assert Action.NEW_INSTANCE not in first.actions
    prober.probe(ProbeResult.ok("instance-1"))
    assert value(registry, RESTARTS, agent=AGENT) == 0.0

    restarted = prober.probe(ProbeResult.ok("instance-2"))
    assert restarted.restarted
    assert value(registry, RESTARTS, agent=AGENT) == 1.0

    # A restart seen across an outage is counted too, and only once.
    prober.probe(REFUSED)
    prober.probe(REFUSED)
    back = prober.probe(ProbeResult.ok("instance-3"))
    assert back.actions == Action.FIRE_RECOVERED | Action.NEW_INSTANCE
    prober.probe(ProbeResult.ok("instance-3"))
    assert value(registry, RESTARTS, agent=AGENT) == 2.0


# --- schema --------------------------------------------------------------------------------


def test_schema_reads_by_outcome_reloads_and_the_etag_held(
    registry: CollectorRegistry, metrics: DatasourceMetrics
) -> None:
    def requests() -> dict[str, float | None]:
        return {
            outcome.value: value(registry, SCHEMA_REQUESTS, agent=AGENT, outcome=outcome)
            for outcome in SchemaOutcome
        }

    def held(etag: str) -> float | None:
        return value(registry, SCHEMA_INFO, agent=AGENT, etag=etag)

    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.LOADED, '"e1"'))
    assert requests() == {**{o.value: 0.0 for o in SchemaOutcome}, "loaded": 1.0}
    assert value(registry, SCHEMA_RELOADS, agent=AGENT) == 0.0
    assert held('"e1"') == 1.0

    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.NOT_MODIFIED, '"e1"'))
    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.UNCHANGED, '"e1b"'))
    assert value(registry, SCHEMA_RELOADS, agent=AGENT) == 0.0
    assert held('"e1"') is None
    assert held('"e1b"') == 1.0

    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.RELOADED, '"e2"', change="+orders"))
    assert value(registry, SCHEMA_RELOADS, agent=AGENT) == 1.0
    assert held('"e1b"') is None
    assert held('"e2"') == 1.0

    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.FAILED, None, error="refused"))
    assert held('"e2"') == 1.0  # a failed read keeps the ETag held
    assert value(registry, SCHEMA_RELOADS, agent=AGENT) == 1.0
    assert requests() == {
        "loaded": 1.0,
        "reloaded": 1.0,
        "unchanged": 1.0,
        "not_modified": 1.0,
        "failed": 1.0,
    }


def test_two_agents_are_kept_apart_by_label(
    registry: CollectorRegistry, metrics: DatasourceMetrics
) -> None:
    a, b = Prober(metrics, AGENT), Prober(metrics, OTHER)
    a.probe(OK)
    a.probe(OK)
    b.probe(REFUSED)
    b.probe(REFUSED)
    b.probe(TIMEOUT)
    metrics.observe_schema(SchemaEvent(AGENT, SchemaOutcome.LOADED, '"a"'))
    metrics.observe_schema(SchemaEvent(OTHER, SchemaOutcome.FAILED, None))

    assert value(registry, UP, agent=AGENT) == 1.0
    assert value(registry, UP, agent=OTHER) == 0.0
    assert value(registry, PROBES, agent=AGENT) == 2.0
    assert value(registry, PROBES, agent=OTHER) == 3.0
    assert value(registry, FAILURES, agent=AGENT, reason="refused") == 0.0
    assert value(registry, FAILURES, agent=OTHER, reason="refused") == 2.0
    assert value(registry, FAILURES, agent=OTHER, reason="timeout") == 1.0
    assert value(registry, TRANSITIONS, agent=AGENT, state="up") == 1.0
    assert value(registry, TRANSITIONS, agent=OTHER, state="down") == 1.0
    assert value(registry, TRANSITIONS, agent=AGENT, state="down") is None
    assert value(registry, SCHEMA_REQUESTS, agent=AGENT, outcome="loaded") == 1.0
    assert value(registry, SCHEMA_REQUESTS, agent=OTHER, outcome="loaded") == 0.0
    assert value(registry, SCHEMA_REQUESTS, agent=OTHER, outcome="failed") == 1.0
    assert value(registry, SCHEMA_INFO, agent=AGENT, etag='"a"') == 1.0
    assert value(registry, f"{DURATION}_count", agent=AGENT) == 2.0
    assert value(registry, f"{DURATION}_count", agent=OTHER) == 3.0


def test_probes_in_flight_reads_the_process_count_at_scrape_time(
    registry: CollectorRegistry, metrics: DatasourceMetrics
) -> None:
    base = value(registry, IN_FLIGHT)
    assert base == probes_in_flight.value
    assert base is not None
    with probes_in_flight.counting():
        assert value(registry, IN_FLIGHT) == base + 1
        with probes_in_flight.counting():
            assert value(registry, IN_FLIGHT) == base + 2
        assert value(registry, IN_FLIGHT) == base + 1
    assert value(registry, IN_FLIGHT) == base


# --- instrument / uninstrument -------------------------------------------------------------


def probe_event(agent: str, result: ProbeResult = OK) -> ProbeEvent:
    after = HealthState.UP if result.succeeded else HealthState.UNKNOWN
    return ProbeEvent(agent, result, 0.01, 0.0, HealthState.UNKNOWN, after, 0, Action.NONE)


def test_instrument_is_idempotent_and_adds_one_hook_of_each_kind(
    instrumented: CollectorRegistry, saved_hooks: tuple[tuple[object, ...], tuple[object, ...]]
) -> None:
    probe_hooks, schema_hooks = saved_hooks
    metrics = instrument(instrumented)
    assert instrument(instrumented) is metrics
    assert get_probe_hooks() == (*probe_hooks, metrics.observe_probe)
    assert get_schema_hooks() == (*schema_hooks, metrics.observe_schema)


def test_instrumented_metrics_are_fed_through_the_process_hooks(
    instrumented: CollectorRegistry,
) -> None:
    instrument(instrumented)
    own: list[ProbeEvent] = []
    probe_hooks.deliver(probe_event(AGENT), AGENT, [own.append])
    probe_hooks.deliver(probe_event(AGENT, REFUSED), AGENT, ())
    schema_hooks.deliver(SchemaEvent(AGENT, SchemaOutcome.LOADED, '"s"'), AGENT)
    assert len(own) == 1
    assert value(instrumented, PROBES, agent=AGENT) == 2.0
    assert value(instrumented, UP, agent=AGENT) == 1.0
    assert value(instrumented, FAILURES, agent=AGENT, reason="refused") == 1.0
    assert value(instrumented, SCHEMA_REQUESTS, agent=AGENT, outcome="loaded") == 1.0
    assert value(instrumented, SCHEMA_INFO, agent=AGENT, etag='"s"') == 1.0


def test_uninstrument_removes_the_hooks_and_the_metrics(
    instrumented: CollectorRegistry, saved_hooks: tuple[tuple[object, ...], tuple[object, ...]]
) -> None:
    saved_probe_hooks, saved_schema_hooks = saved_hooks
    metrics = instrument(instrumented)
    probe_hooks.deliver(probe_event(AGENT), AGENT, ())
    assert b"forest_datasource_probes_total" in generate_latest(instrumented)

    uninstrument(instrumented)
    assert get_probe_hooks() == saved_probe_hooks
    assert get_schema_hooks() == saved_schema_hooks
    assert b"forest_datasource_" not in generate_latest(instrumented)
    uninstrument(instrumented)  # a second call does nothing
    assert get_probe_hooks() == saved_probe_hooks

    # The old metrics hear nothing more (read from the collector itself).
    probe_hooks.deliver(probe_event(AGENT), AGENT, ())
    (family,) = metrics.probes.collect()
    totals = [s.value for s in family.samples if s.name == PROBES and s.labels["agent"] == AGENT]
    assert totals == [1.0]

    # Every name is free again: instrumenting anew registers fresh metrics.
    again = instrument(instrumented)
    assert again is not metrics
    assert value(instrumented, PROBES, agent=AGENT) is None
    probe_hooks.deliver(probe_event(AGENT), AGENT, ())
    assert value(instrumented, PROBES, agent=AGENT) == 1.0


# --- a real agent ---------------------------------------------------------------------------


def test_a_live_agent_is_measured_up_then_down_once_its_server_stops(
    instrumented: CollectorRegistry,
) -> None:
    threshold = 2
    instrument(instrumented)
    app, _ = agent_app()
    server = start_server(app)
    client = HealthCheckClient(
        server.url + HEALTH_PATH,
        TEST_SECRET,
        polling_interval=0.05,
        timeout=1.0,
        failure_threshold=threshold,
        name="live",
    )

    def read(name: str, **labels: str) -> float:
        return value(instrumented, name, agent="live", **labels) or 0.0

    def connection_failures() -> float:
        return read(FAILURES, reason="refused") + read(FAILURES, reason="connection")

    try:
        client.start()
        assert wait_until(lambda: read(PROBES) >= 3 and read(UP) == 1.0), (
            read(PROBES),
            read(UP),
        )
        probes = read(PROBES)
        assert wait_until(lambda: read(PROBES) > probes)
        assert read(f"{DURATION}_count") >= 3
        assert read(TRANSITIONS, state="up") == 1.0

        server.stop()
        assert wait_until(lambda: value(instrumented, UP, agent="live") == 0.0)
        assert connection_failures() >= threshold
        assert read(TRANSITIONS, state="down") == 1.0
        assert read(RESTARTS) == 0.0
    finally:
        client.stop()
        server.stop()
