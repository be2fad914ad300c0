"""`HealthWatcher`: the probe loop of one agent, as a coroutine on whatever loop runs it.

It carries out the pure decisions (`ProbePolicy` for when, `HealthStateMachine` for what it
means) and hands a `ProbeEvent` to its hooks after every probe. The threaded
`HealthCheckClient` runs it on the shared engine; `rpc_datasource.aio` on the caller's loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from rpc_datasource.health.clock import Clock, LoopClock
from rpc_datasource.health.events import ProbeEvent, ProbeHook, probe_hooks
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import (
    FailureReason,
    HealthState,
    HealthStateMachine,
    ProbeResult,
)
from rpc_datasource.health.watch_rules import HeldRequestTracker, ProbeRequest
from rpc_datasource.instrumentation.in_flight import probes_in_flight
from rpc_datasource.transport.probe import Probe, ProbeOutcome

logger = logging.getLogger(__name__)


class HealthWatcher:
    """Probes one agent at the policy's times, at most one probe in flight, forever."""

    def __init__(
        self,
        name: str,
        policy: ProbePolicy,
        probe: Probe,
        hooks: Sequence[ProbeHook] = (),
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.machine = HealthStateMachine(policy.failure_threshold, policy.recovery_threshold)
        self._probe = probe
        self._hooks = tuple(hooks)
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._watch = HeldRequestTracker(policy, name, self._rng)

    async def run(self) -> None:
        """Probe until cancelled; cancelling it also cancels the probe in flight."""
        clock = self._clock
        due = clock.now() + self.policy.first_delay(self._rng)
        while True:
            await clock.sleep(max(0.0, due - clock.now()))
            started = clock.now()
            request = self._watch.next_request(self.machine.state is HealthState.UP)
            outcome = await self._guarded_probe(request)
            self.observe(outcome.result, outcome.latency_s, started - due)
            ended = clock.now()
            delay = self._watch.delay_after(
                request, outcome.result.succeeded, outcome.health_etag, ended - started
            )
            if delay is None:
                # A plain probe's interval runs start to start, so the time it took does not
                # stretch it; a held request's runs from its answer.
                since = ended if request.held else started
                due = self.policy.next_due(since, self.machine.in_transition, self._rng)
                due = max(due, ended)  # a probe that outlasted its interval: the next at once
            else:
                due = ended + delay

    def observe(self, result: ProbeResult, latency: float | None, lateness: float) -> ProbeEvent:
        """Feed one outcome to the state machine and the event to every hook."""
        before = self.machine.state
        actions = self.machine.observe(result)
        event = ProbeEvent(
            client=self.name,
            result=result,
            latency_s=latency,
            lateness_s=lateness,
            state_before=before,
            state_after=self.machine.state,
            consecutive_failures=self.machine.consecutive_failures,
            actions=actions,
        )
        probe_hooks.deliver(event, event.client, self._hooks)
        return event

    async def _guarded_probe(self, request: ProbeRequest) -> ProbeOutcome:
        try:
            with probes_in_flight.counting():
                return await self._probe(request)
        except Exception as error:
            logger.exception("health probe of %s raised; counted as a failure", self.name)
            failure = ProbeResult.failed(FailureReason.CONNECTION, f"probe raised {error!r}")
            return ProbeOutcome(failure, None)
