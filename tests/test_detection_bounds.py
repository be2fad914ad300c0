"""The timing contracts, proven on a fake clock against the real `HealthWatcher`: every kind of
fault, begun at every kind of moment, in both modes, is declared down exactly once and within
`detection_bound_s`; a fault that never reaches the threshold never is; the recovery comes
once. No sleep, no thread, no socket: the simulated agent below answers as the transport
would (its timeouts included), so these bounds are exact, where the real-process tier
(`test_fault_matrix`) checks the same outcomes through real sockets, within scheduler noise.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, auto

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import FailureReason, ProbeResult
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.runtime.watcher import HealthWatcher
from rpc_datasource.transport.probe import ProbeOutcome
from tests.support.fake_clock import FakeClock

HEALTH_ETAG = '"health-1"'
ANSWER_LATENCY_S = 0.002


class Kind(Enum):
    """How the simulated agent answers while one behaviour lasts."""

    HEALTHY = auto()  # answers at once; holds a watch until its wait ends or a change
    REFUSED = auto()  # no listener: refused at once; a held request is cut at the change
    FROZEN = auto()  # accepts, never answers (SIGSTOP, a black hole): the client times out
    SLOW = auto()  # answers ok after `latency`, or times out first
    FAILING = auto()  # answers at once with a failure of `reason` (5xx, bad body, 401...)
    SHUTTING_DOWN = auto()  # answers 503 shutting_down at once


@dataclass(frozen=True)
class Behaviour:
    kind: Kind
    reason: FailureReason = FailureReason.HTTP_STATUS
    latency: float = 0.0


HEALTHY = Behaviour(Kind.HEALTHY)


class SimulatedAgent:
    """An agent whose behaviour changes at given fake instants, probed as the transport
    would: a plain probe gets `timeout`, a held one `wait + timeout`."""

    def __init__(self, clock: FakeClock, policy: ProbePolicy) -> None:
        self.clock = clock
        self.policy = policy
        self.timeline: list[tuple[float, Behaviour]] = [(0.0, HEALTHY)]

    def change(self, at: float, behaviour: Behaviour) -> None:
        self.timeline.append((at, behaviour))
        self.timeline.sort(key=lambda entry: entry[0])

    def behaviour_at(self, moment: float) -> Behaviour:
        current = HEALTHY
        for start, behaviour in self.timeline:
            if start <= moment:
                current = behaviour
        return current

    def next_change_after(self, moment: float) -> float | None:
        later = [start for start, _ in self.timeline if start > moment]
        return min(later) if later else None

    async def probe(self, request: ProbeRequest) -> ProbeOutcome:
        start = self.clock.now()
        deadline = start + (request.wait or 0.0) + self.policy.timeout
        if request.held and self.behaviour_at(start).kind is Kind.HEALTHY:
            assert request.wait is not None
            change = self.next_change_after(start)
            if change is None or change >= start + request.wait:
                await self.clock.sleep(request.wait)
                return ProbeOutcome(ProbeResult.ok("instance-1"), request.wait, HEALTH_ETAG)
            await self.clock.sleep(change - start)
            new = self.behaviour_at(change)
            if new.kind is Kind.REFUSED:  # the agent went away: the held connection is cut
                cut = ProbeResult.failed(FailureReason.CONNECTION, "connection reset")
                return ProbeOutcome(cut, None)
            return await self.answer(new, start, deadline)
        return await self.answer(self.behaviour_at(start), start, deadline)

    async def answer(self, behaviour: Behaviour, start: float, deadline: float) -> ProbeOutcome:
        kind = behaviour.kind
        if kind is Kind.HEALTHY:
            await self.clock.sleep(ANSWER_LATENCY_S)
            return ProbeOutcome(ProbeResult.ok("instance-1"), ANSWER_LATENCY_S, HEALTH_ETAG)
        if kind is Kind.REFUSED:
            return ProbeOutcome(ProbeResult.failed(FailureReason.REFUSED, "refused"), None)
        if kind is Kind.SHUTTING_DOWN:
            return ProbeOutcome(ProbeResult.shutting_down(), ANSWER_LATENCY_S)
        if kind is Kind.FAILING:
            return ProbeOutcome(ProbeResult.failed(behaviour.reason, "failing"), ANSWER_LATENCY_S)
        now = self.clock.now()
        if kind is Kind.SLOW and now + behaviour.latency < deadline:
            await self.clock.sleep(behaviour.latency)
            return ProbeOutcome(ProbeResult.ok("instance-1"), behaviour.latency, HEALTH_ETAG)
        await self.clock.sleep(max(0.0, deadline - now))
        return ProbeOutcome(ProbeResult.failed(FailureReason.TIMEOUT, "timed out"), None)


@dataclass
class Run:
    """What a watcher did: each event with the fake instant it came at."""

    events: list[tuple[float, ProbeEvent]]

    @property
    def downs(self) -> list[float]:
        return [at for at, event in self.events if event.went_down]

    @property
    def recoveries(self) -> list[float]:
        return [at for at, event in self.events if event.recovered]

    def reasons_at_down(self) -> list[FailureReason | None]:
        return [event.result.reason for _, event in self.events if event.went_down]


def watch(
    policy: ProbePolicy, changes: list[tuple[float, Behaviour]], until: float, seed: int
) -> Run:
    """Run one watcher against the simulated agent, on a fake clock, up to `until`."""

    async def main() -> Run:
        clock = FakeClock()
        agent = SimulatedAgent(clock, policy)
        for at, behaviour in changes:
            agent.change(at, behaviour)
        events: list[tuple[float, ProbeEvent]] = []
        watcher = HealthWatcher(
            "agent",
            policy,
            agent.probe,
            (lambda event: events.append((clock.now(), event)),),
            clock=clock,
            rng=random.Random(seed),
        )
        task = asyncio.ensure_future(watcher.run())
        await clock.advance(until)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Run(events)

    return asyncio.run(main())


POLICIES = {
    "poll": ProbePolicy(polling_interval=1.0, failure_threshold=3, timeout=0.5, jitter=0.1),
    "poll-n1": ProbePolicy(polling_interval=2.0, failure_threshold=1, timeout=1.0, jitter=0.2),
    "poll-retry": ProbePolicy(
        polling_interval=3.0, failure_retry_interval=0.5, failure_threshold=2, timeout=0.4
    ),
    "watch": ProbePolicy(
        polling_interval=1.0, failure_threshold=3, timeout=0.5, mode="watch", watch_wait=2.0
    ),
    "watch-n2": ProbePolicy(
        polling_interval=0.5,
        failure_threshold=2,
        timeout=0.3,
        jitter=0.0,
        mode="watch",
        watch_wait=1.0,
    ),
}

FAULTS = {
    "refused": Behaviour(Kind.REFUSED),
    "frozen": Behaviour(Kind.FROZEN),
    "answer-just-over-timeout": Behaviour(Kind.SLOW, latency=10.0),
    "http-500": Behaviour(Kind.FAILING, FailureReason.HTTP_STATUS),
    "bad-body": Behaviour(Kind.FAILING, FailureReason.BAD_BODY),
    "unauthorized": Behaviour(Kind.FAILING, FailureReason.UNAUTHORIZED),
    "not-ready": Behaviour(Kind.FAILING, FailureReason.NOT_READY),
    "shutting-down": Behaviour(Kind.SHUTTING_DOWN),
}
# When the fault begins, as fractions of the time between two probes (or two holds): right
# after a probe, in the middle, just before the next, and a few in between.
PHASES = [0.0, 0.01, 0.25, 0.5, 0.77, 0.99]
WARM_UP_S = 7.0


def cycle_of(policy: ProbePolicy) -> float:
    return policy.watch_wait if policy.mode == "watch" else policy.polling_interval


def cases() -> Iterator[object]:
    for policy_id in POLICIES:
        for fault_id in FAULTS:
            yield pytest.param(policy_id, fault_id, id=f"{policy_id}-{fault_id}")


@pytest.mark.parametrize(("policy_id", "fault_id"), list(cases()))
def test_every_fault_begun_at_any_moment_is_down_once_within_the_bound_then_recovers_once(
    policy_id: str, fault_id: str
) -> None:
    policy = POLICIES[policy_id]
    fault = FAULTS[fault_id]
    bound = policy.detection_bound_s
    for seed, phase in enumerate(PHASES):
        began = WARM_UP_S + phase * cycle_of(policy)
        ended = began + bound + 3.0
        run = watch(policy, [(began, fault), (ended, HEALTHY)], ended + bound + 3.0, seed)
        assert len(run.downs) == 1, (phase, run.downs)
        took = run.downs[0] - began
        assert 0 <= took <= bound + 1e-9, f"down {took:.3f} s after the fault, bound {bound:.3f}"
        assert len(run.recoveries) == 1 and run.recoveries[0] > ended, (phase, run.recoveries)
        if fault.kind is Kind.SHUTTING_DOWN:
            # An explicit 503 shutting_down is a down at once, not after N failures.
            assert run.reasons_at_down() == [FailureReason.SHUTTING_DOWN]


@pytest.mark.parametrize("policy_id", list(POLICIES))
def test_answers_just_under_the_timeout_are_never_an_outage(policy_id: str) -> None:
    policy = POLICIES[policy_id]
    slow = Behaviour(Kind.SLOW, latency=policy.timeout * 0.9)
    run = watch(policy, [(WARM_UP_S, slow)], WARM_UP_S + 10 * cycle_of(policy), seed=3)
    assert run.downs == []


@pytest.mark.parametrize("policy_id", ["poll", "poll-retry", "watch", "watch-n2"])
def test_failure_runs_below_the_threshold_never_go_down(policy_id: str) -> None:
    """Flapping: each run of failures one short of the threshold, then a success."""
    policy = POLICIES[policy_id]
    changes: list[tuple[float, Behaviour]] = []
    at = WARM_UP_S
    gap = policy.retry_interval
    for _ in range(6):
        # N-1 probes fail (the run lasts N-1 retry intervals, less the jitter), then healthy.
        changes.append((at, Behaviour(Kind.REFUSED)))
        run_length = (policy.failure_threshold - 1) * gap * (1 - policy.jitter) - 0.01
        changes.append((at + max(run_length, 0.001), HEALTHY))
        at += 2 * cycle_of(policy) + gap
    run = watch(policy, changes, at + cycle_of(policy), seed=5)
    assert run.downs == []


@pytest.mark.parametrize("policy_id", ["poll", "watch"])
def test_each_run_of_failures_at_the_threshold_is_one_down_and_one_recovery(
    policy_id: str,
) -> None:
    policy = POLICIES[policy_id]
    bound = policy.detection_bound_s
    runs = []
    at = WARM_UP_S
    for _ in range(3):
        runs.append(at)
        at += bound + 2.0
    changes = []
    for began in runs:
        changes += [(began, Behaviour(Kind.REFUSED)), (began + bound + 0.5, HEALTHY)]
    run = watch(policy, changes, at + 2.0, seed=9)
    assert len(run.downs) == 3 and len(run.recoveries) == 3
    for began, down in zip(runs, run.downs, strict=True):
        assert 0 <= down - began <= bound + 1e-9


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    policy_id=st.sampled_from(sorted(POLICIES)),
    fault_id=st.sampled_from(["frozen", "refused"]),
    phase=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_bound_holds_for_any_phase_and_any_jitter(
    policy_id: str, fault_id: str, phase: float, seed: int
) -> None:
    policy = POLICIES[policy_id]
    bound = policy.detection_bound_s
    began = WARM_UP_S + phase * cycle_of(policy)
    run = watch(policy, [(began, FAULTS[fault_id])], began + bound + 1.0, seed)
    assert len(run.downs) == 1
    assert 0 <= run.downs[0] - began <= bound + 1e-9
