"""Prometheus metrics of the agents in this process: requests, refusals, watches, streams.

`instrument(registry)` registers them and adds a request hook process-wide; the gauges are
read from the live agents at each scrape. Each process has its own: under a multi-worker
server, a scrape sees the worker that answered it. Needs the `metrics` extra.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter
    from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "rpc_agent.metrics needs prometheus-client: pip install 'forest-rpc-pair[agent,metrics]'"
    ) from error

from rpc_agent.core.agent import AgentCore
from rpc_agent.core.checks import CheckStatus
from rpc_agent.core.events import AgentRequestEvent, request_hooks
from rpc_agent.process import state as server_process
from rpc_common.instrumentation import InstrumentedRegistries


class AgentStateCollector(Collector):
    """Gauges read from the process's live agents when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        agents = [a for a in server_process.live_agents() if isinstance(a, AgentCore)]
        held = GaugeMetricFamily(
            "forest_agent_held_watches", "Health watches the agent is holding."
        )
        held.add_metric([], sum(agent.held_requests.held for agent in agents))
        streams = GaugeMetricFamily(
            "forest_agent_sse_streams", "Open streams on the legacy /sse route."
        )
        streams.add_metric([], sum(_open_streams(agent) for agent in agents))
        stopping = GaugeMetricFamily(
            "forest_agent_shutting_down", "1 once the agent has begun shutting down."
        )
        stopping.add_metric([], any(agent.shutting_down for agent in agents))
        info = InfoMetricFamily(
            "forest_agent", "The agent's identity.", labels=["instance_id", "version"]
        )
        # Agents of one server share its instance_id: one sample each.
        for instance_id, version in sorted({(a.instance_id, a.version) for a in agents}):
            info.add_metric([instance_id, version], {})
        schema_error = GaugeMetricFamily(
            "forest_agent_schema_error",
            "1 while the last call of the schema provider failed (the last good schema is served).",
        )
        schema_error.add_metric([], any(agent.schema_cache.error for agent in agents))
        check_ok = GaugeMetricFamily(
            "forest_agent_check_ok",
            "1 while a readiness check passes, 0 while it fails (absent before its first result).",
            labels=["check"],
        )
        check_duration = GaugeMetricFamily(
            "forest_agent_check_duration_seconds",
            "How long a readiness check's last completed run took.",
            labels=["check"],
        )
        for name, status in sorted(_check_statuses(agents).items()):
            check_ok.add_metric([name], int(status.ok))
            if status.duration_s is not None:
                check_duration.add_metric([name], status.duration_s)
        yield from (held, streams, stopping, schema_error, info, check_ok, check_duration)


def _check_statuses(agents: list[AgentCore]) -> dict[str, CheckStatus]:
    """Each check's latest status across the agents (a failing one wins)."""
    found: dict[str, CheckStatus] = {}
    for agent in agents:
        for name, status in agent.checks.statuses().items():
            if status is not None and (name not in found or not status.ok):
                found[name] = status
    return found


def _open_streams(agent: AgentCore) -> int:
    current = agent.sse_manager.current
    return int(current is not None and current.active)


class AgentMetrics:
    """The agent's metrics on one registry, and the request hook that counts answers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "forest_agent_requests",
            "Requests answered on the agent's routes, by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.unauthorized = Counter(
            "forest_agent_unauthorized",
            "Requests refused with 401, by reason.",
            ["reason"],
            registry=registry,
        )
        self.state = AgentStateCollector()
        registry.register(self.state)
        self.collectors = (self.requests, self.unauthorized, self.state)

    def observe_request(self, event: AgentRequestEvent) -> None:
        """A request hook: count the answer, and the refusal's reason."""
        self.requests.labels(event.route, str(event.status)).inc()
        if event.refusal is not None:
            self.unauthorized.labels(event.refusal).inc()


def _attach(metrics: AgentMetrics) -> None:
    request_hooks.register(metrics.observe_request)


def _detach(metrics: AgentMetrics) -> None:
    request_hooks.remove(metrics.observe_request)


_registries = InstrumentedRegistries(AgentMetrics, _attach, _detach)


def instrument(registry: CollectorRegistry = REGISTRY) -> AgentMetrics:
    """Measure every agent of the process on `registry` (once per registry)."""
    return _registries.instrument(registry)


def uninstrument(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop measuring on `registry` and take the metrics off it (tests, reconfiguration)."""
    _registries.uninstrument(registry)
