"""`InstrumentedRegistries`: one metrics object per Prometheus registry, hooked in once.

What `rpc_datasource.instrumentation.metrics` and `rpc_agent.metrics` share:
`instrument(registry)` makes the metrics on a registry and attaches their hooks the first
time, and returns the same object after; `uninstrument(registry)` detaches the hooks and
takes the metrics off the registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry


class Metrics(Protocol):
    """Metrics that know the collectors they registered."""

    @property
    def collectors(self) -> Sequence[Collector]: ...


M = TypeVar("M", bound=Metrics)


class InstrumentedRegistries(Generic[M]):
    """The registries instrumented so far, each with its metrics object."""

    def __init__(
        self,
        make: Callable[[CollectorRegistry], M],
        attach: Callable[[M], None],
        detach: Callable[[M], None],
    ) -> None:
        self._make = make
        self._attach = attach
        self._detach = detach
        self._lock = threading.Lock()
        self._metrics: dict[CollectorRegistry, M] = {}

    def instrument(self, registry: CollectorRegistry) -> M:
        """The metrics on `registry`: made and attached the first time, then the same."""
        with self._lock:
            metrics = self._metrics.get(registry)
            if metrics is None:
                metrics = self._metrics[registry] = self._make(registry)
                self._attach(metrics)
            return metrics

    def uninstrument(self, registry: CollectorRegistry) -> None:
        """Detach the metrics of `registry` and unregister them (nothing if there are none)."""
        with self._lock:
            metrics = self._metrics.pop(registry, None)
            if metrics is None:
                return
            self._detach(metrics)
            for collector in metrics.collectors:
                registry.unregister(collector)
