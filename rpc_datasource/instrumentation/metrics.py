"""Prometheus metrics of every health client and datasource in the process, fed by hooks.

`instrument(registry)` registers them and adds their hooks process-wide: one call, and every
client, started before or after, is measured. Needs the `metrics` extra (prometheus-client).
"""

from __future__ import annotations

import threading

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "rpc_datasource.instrumentation.metrics needs prometheus-client: "
        "pip install 'forest-rpc-pair[datasource,metrics]'"
    ) from error

from rpc_common.instrumentation import InstrumentedRegistries
from rpc_datasource.health.events import (
    ProbeEvent,
    SchemaEvent,
    SchemaOutcome,
    probe_hooks,
    schema_hooks,
)
from rpc_datasource.health.state import FailureReason, HealthState
from rpc_datasource.instrumentation.in_flight import probes_in_flight

PROBE_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class DatasourceMetrics:
    """The metrics on one registry, and the two hooks that update them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._known_agents: set[str] = set()
        self._lock = threading.Lock()
        self.agent_up = Gauge(
            "forest_datasource_agent_up",
            "Whether the agent is up (1) or down (0), once a probe has told.",
            ["agent"],
            registry=registry,
        )
        self.agent_degraded = Gauge(
            "forest_datasource_agent_degraded",
            "1 while the agent answers degraded: serving, with non-critical checks failing.",
            ["agent"],
            registry=registry,
        )
        self.probes = Counter(
            "forest_datasource_probes",
            "Health probes sent to the agent.",
            ["agent"],
            registry=registry,
        )
        self.failures = Counter(
            "forest_datasource_probe_failures",
            "Failed health probes, by reason category.",
            ["agent", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "forest_datasource_probe_duration_seconds",
            "Time from sending a probe to its outcome (a held watch includes its wait).",
            ["agent"],
            buckets=PROBE_DURATION_BUCKETS,
            registry=registry,
        )
        self.transitions = Counter(
            "forest_datasource_state_transitions",
            "Changes of the agent's state, by the state entered.",
            ["agent", "state"],
            registry=registry,
        )
        self.restarts = Counter(
            "forest_datasource_agent_restarts",
            "Restarts of the agent seen by a probe (a new instance_id).",
            ["agent"],
            registry=registry,
        )
        self.schema_requests = Counter(
            "forest_datasource_schema_requests",
            "Reads of the agent's schema, by outcome.",
            ["agent", "outcome"],
            registry=registry,
        )
        self.schema_reloads = Counter(
            "forest_datasource_schema_reloads",
            "Schema changes taken in after the first read.",
            ["agent"],
            registry=registry,
        )
        self.schema = Info(
            "forest_datasource_schema",
            "The ETag of the schema the datasource holds.",
            ["agent"],
            registry=registry,
        )
        self.lateness = Histogram(
            "forest_datasource_probe_lateness_seconds",
            "How late probes started against their schedule, for every agent of the process.",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "forest_datasource_probes_in_flight",
            "Probes of this process awaiting their answer (held watches included).",
            registry=registry,
        )
        self.in_flight.set_function(lambda: probes_in_flight.value)
        self.collectors = (
            self.agent_up,
            self.agent_degraded,
            self.probes,
            self.failures,
            self.duration,
            self.transitions,
            self.restarts,
            self.schema_requests,
            self.schema_reloads,
            self.schema,
            self.lateness,
            self.in_flight,
        )

    def observe_probe(self, event: ProbeEvent) -> None:
        """A probe hook: count the probe and any change of state it made."""
        agent = event.client
        self._first_sight(agent)
        self.probes.labels(agent).inc()
        if event.latency_s is not None:
            self.duration.labels(agent).observe(event.latency_s)
        self.lateness.observe(max(0.0, event.lateness_s))
        if event.reason is not None:
            self.failures.labels(agent, event.reason).inc()
        if event.state_after is not event.state_before:
            self.transitions.labels(agent, event.state_after).inc()
        if event.state_after is not HealthState.UNKNOWN:
            self.agent_up.labels(agent).set(event.state_after is HealthState.UP)
        self.agent_degraded.labels(agent).set(event.result.degraded)
        if event.restarted:
            self.restarts.labels(agent).inc()

    def observe_schema(self, event: SchemaEvent) -> None:
        """A schema hook: count the read, and a reload; keep the ETag held."""
        agent = event.client
        self._first_sight(agent)
        self.schema_requests.labels(agent, event.outcome).inc()
        if event.outcome is SchemaOutcome.RELOADED:
            self.schema_reloads.labels(agent).inc()
        if event.etag is not None:
            self.schema.labels(agent).info({"etag": event.etag})

    def _first_sight(self, agent: str) -> None:
        """Start an agent's counters at 0, so that a first failure shows as an increase."""
        with self._lock:
            if agent in self._known_agents:
                return
            self._known_agents.add(agent)
        self.probes.labels(agent)
        self.restarts.labels(agent)
        self.schema_reloads.labels(agent)
        for reason in FailureReason:
            self.failures.labels(agent, reason)
        for outcome in SchemaOutcome:
            self.schema_requests.labels(agent, outcome)


def _attach(metrics: DatasourceMetrics) -> None:
    probe_hooks.register(metrics.observe_probe)
    schema_hooks.register(metrics.observe_schema)


def _detach(metrics: DatasourceMetrics) -> None:
    probe_hooks.remove(metrics.observe_probe)
    schema_hooks.remove(metrics.observe_schema)


_registries = InstrumentedRegistries(DatasourceMetrics, _attach, _detach)


def instrument(registry: CollectorRegistry = REGISTRY) -> DatasourceMetrics:
    """Measure every client and datasource of the process on `registry` (once per registry)."""
    return _registries.instrument(registry)


def uninstrument(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop measuring on `registry` and take the metrics off it (tests, reconfiguration)."""
    _registries.uninstrument(registry)
