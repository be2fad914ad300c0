"""`HealthWatcher` timing rules on a fake clock: no sleeps, no network, exact instants."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import FailureReason, HealthState, ProbeResult
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.runtime.callbacks import OrderedCallbacks
from rpc_datasource.runtime.watcher import HealthWatcher
from rpc_datasource.transport.probe import ProbeOutcome
from tests.support.fake_clock import FakeClock, settle

OK = ProbeResult.ok("instance-a", '"etag"')
FAIL = ProbeResult.failed(FailureReason.REFUSED, "connection refused")


class ScriptedAgent:
    """A fake probe: records each probe's fake start time and answers from a script."""

    def __init__(self, clock: FakeClock, answer: ProbeResult = OK) -> None:
        self.clock = clock
        self.answer = answer
        self.starts: list[float] = []
        self.hang = False
        self.cancelled = 0
        self.requests: list[ProbeRequest] = []

    async def probe(self, request: ProbeRequest) -> ProbeOutcome:
        self.starts.append(self.clock.now())
        self.requests.append(request)
        if self.hang:
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return ProbeOutcome(self.answer, 0.001)


def watcher(
    clock: FakeClock,
    agent: ScriptedAgent,
    *,
    seed: int = 1,
    hooks: tuple[Callable[[ProbeEvent], None], ...] = (),
    **policy: Any,
) -> tuple[HealthWatcher, list[ProbeEvent]]:
    events: list[ProbeEvent] = []
    made = HealthWatcher(
        "agent",
        ProbePolicy(**policy),
        agent.probe,
        (events.append, *hooks),
        clock=clock,
        rng=random.Random(seed),
    )
    return made, events


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def gaps(starts: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


# --- when probes start -------------------------------------------------------------------


def test_first_probes_of_many_clients_spread_over_the_first_interval() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agents = [ScriptedAgent(clock) for _ in range(200)]
        tasks = [
            asyncio.create_task(watcher(clock, agent, seed=seed, polling_interval=10.0)[0].run())
            for seed, agent in enumerate(agents)
        ]
        await clock.advance(10.0)
        firsts = sorted(agent.starts[0] for agent in agents)
        for task in tasks:
            await cancel(task)
        assert all(0.0 <= first <= 10.0 for first in firsts)
        # Spread, not bunched: every second of the first interval sees some first probes.
        assert {int(first) for first in firsts} == set(range(10))

    run(scenario)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.3])
def test_steady_probes_are_an_interval_apart_within_the_jitter(jitter: float) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agent = ScriptedAgent(clock)
        task = asyncio.create_task(
            watcher(clock, agent, polling_interval=2.0, jitter=jitter)[0].run()
        )
        await clock.advance(200.0)
        await cancel(task)
        between = gaps(agent.starts)
        assert len(between) >= 60
        assert all(2.0 * (1 - jitter) - 1e-9 <= gap <= 2.0 * (1 + jitter) + 1e-9 for gap in between)
        if jitter:
            assert max(between) - min(between) > jitter  # jitter really varies the gaps
        else:
            assert between == pytest.approx([2.0] * len(between))

    run(scenario)


def test_after_a_first_failure_the_retry_interval_applies_until_down() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agent = ScriptedAgent(clock)
        probe_watcher, events = watcher(
            clock,
            agent,
            polling_interval=30.0,
            failure_retry_interval=2.0,
            failure_threshold=3,
            jitter=0.0,
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(30.0)
        assert len(agent.starts) == 1
        agent.answer = FAIL
        await clock.advance(30.0)  # the failing probe
        await clock.advance(4.0)  # two fast retries: the third failure is down
        downs = [event for event in events if event.went_down]
        assert len(downs) == 1
        assert gaps(agent.starts[1:4]) == pytest.approx([2.0, 2.0])
        # While down, back to the polling interval.
        await clock.advance(60.0)
        await cancel(task)
        assert gaps(agent.starts[3:]) == pytest.approx([30.0, 30.0])

    run(scenario)


# --- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_down_fires_once_on_the_threshold_th_failure(threshold: int) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agent = ScriptedAgent(clock, FAIL)
        probe_watcher, events = watcher(
            clock,
            agent,
            polling_interval=1.0,
            failure_threshold=threshold,
            jitter=0.0,
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(threshold + 20.0)
        await cancel(task)
        downs = [index for index, event in enumerate(events) if event.went_down]
        assert downs == [threshold - 1]
        assert events[threshold - 1].state_before is not HealthState.DOWN
        assert events[threshold - 1].state_after is HealthState.DOWN
        assert events[threshold - 1].reason is FailureReason.REFUSED

    run(scenario)


def test_recovery_needs_recovery_threshold_successes_at_the_retry_interval() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agent = ScriptedAgent(clock, FAIL)
        probe_watcher, events = watcher(
            clock,
            agent,
            polling_interval=10.0,
            failure_retry_interval=1.0,
            failure_threshold=1,
            recovery_threshold=3,
            jitter=0.0,
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(10.0)
        assert [event.went_down for event in events] == [True]
        agent.answer = OK
        await clock.advance(10.0)  # first success while down: not yet recovered
        await clock.advance(2.0)  # two more, at the retry interval
        await cancel(task)
        assert [event.recovered for event in events] == [False, False, False, True]
        assert [event.state_after for event in events[1:]] == [
            HealthState.DOWN,
            HealthState.DOWN,
            HealthState.UP,
        ]
        assert gaps(agent.starts[1:]) == pytest.approx([1.0, 1.0])

    run(scenario)


# --- stopping and callbacks ------------------------------------------------------------------


def test_cancelling_the_watcher_cancels_the_probe_in_flight() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        agent = ScriptedAgent(clock)
        agent.hang = True
        probe_watcher, events = watcher(clock, agent, polling_interval=1.0)
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(1.0)
        assert len(agent.starts) == 1  # in flight, hanging
        await cancel(task)
        assert agent.cancelled == 1
        assert task.cancelled()
        await clock.advance(10.0)
        assert len(agent.starts) == 1  # and nothing probes any more
        assert events == []

    run(scenario)


def test_a_callback_blocked_for_long_does_not_delay_another_clients_probes() -> None:
    """A callback blocks its thread far longer than 10 s of the clock: the loop goes on."""

    async def scenario() -> None:
        clock = FakeClock()
        release = threading.Event()
        blocked = threading.Event()
        executor = ThreadPoolExecutor(2, thread_name_prefix="test-callback")
        callbacks = OrderedCallbacks(logging.getLogger(__name__), "stuck")

        def blocking_callback() -> None:
            blocked.set()
            release.wait(30)

        def fire_on_down(event: ProbeEvent) -> None:
            if event.went_down:
                callbacks.submit(executor, "on_server_down", blocking_callback)

        stuck = ScriptedAgent(clock, FAIL)
        healthy = ScriptedAgent(clock)
        stuck_watcher, _ = watcher(
            clock, stuck, polling_interval=1.0, failure_threshold=1, hooks=(fire_on_down,)
        )
        healthy_watcher, healthy_events = watcher(clock, healthy, polling_interval=1.0, jitter=0)
        tasks = [
            asyncio.create_task(stuck_watcher.run()),
            asyncio.create_task(healthy_watcher.run()),
        ]
        try:
            await clock.advance(1.0)
            assert await asyncio.to_thread(blocked.wait, 5.0)
            first = len(healthy.starts)
            await clock.advance(20.0)  # the callback is still blocked all this time
            assert not release.is_set()
            assert len(healthy.starts) - first == 20
            assert gaps(healthy.starts) == pytest.approx([1.0] * (len(healthy.starts) - 1))
            assert all(event.state_after is HealthState.UP for event in healthy_events)
        finally:
            release.set()
            for task in tasks:
                await cancel(task)
            executor.shutdown(wait=True)

    run(scenario)


def test_a_probe_that_raises_is_a_failure_and_probing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        calls: list[float] = []

        async def broken_probe(request: ProbeRequest) -> ProbeOutcome:
            calls.append(clock.now())
            raise RuntimeError("probe bug on purpose")

        events: list[ProbeEvent] = []
        probe_watcher = HealthWatcher(
            "agent",
            ProbePolicy(polling_interval=1.0, failure_threshold=2, jitter=0.0),
            broken_probe,
            (events.append,),
            clock=clock,
            rng=random.Random(3),
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(5.0)
        await cancel(task)
        assert len(calls) >= 4
        assert [event.went_down for event in events[:2]] == [False, True]
        assert all(event.reason is FailureReason.CONNECTION for event in events)

    run(scenario)
    assert "probe bug on purpose" in caplog.text


def test_the_fake_clock_itself_wakes_sleepers_in_deadline_order() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.now()))

        waiters: list[Awaitable[None]] = [
            asyncio.create_task(sleeper("late", 3.0)),
            asyncio.create_task(sleeper("early", 1.0)),
        ]
        await settle()
        await clock.advance(5.0)
        await asyncio.gather(*waiters)
        assert woke == [("early", 1.0), ("late", 3.0)]
        assert clock.now() == 5.0

    run(scenario)


def test_a_slow_probe_does_not_stretch_the_interval() -> None:
    """Intervals run start to start: a probe that takes 0.3 s still starts every 1 s."""

    async def scenario() -> list[float]:
        clock = FakeClock()
        starts: list[float] = []

        async def slow_probe(request: ProbeRequest) -> ProbeOutcome:
            starts.append(clock.now())
            await clock.sleep(0.3)
            return ProbeOutcome(OK, 0.3)

        probe_watcher = HealthWatcher(
            "agent",
            ProbePolicy(polling_interval=1.0, jitter=0.0),
            slow_probe,
            clock=clock,
            rng=random.Random(5),
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(10.0)
        await cancel(task)
        return starts

    starts = asyncio.run(scenario())
    assert len(starts) >= 9
    assert gaps(starts) == pytest.approx([1.0] * (len(starts) - 1))


def test_a_probe_that_outlasts_its_interval_is_followed_at_once_and_is_not_late() -> None:
    """A 2 s probe at a 1 s interval: the next starts when it ends, with no lateness."""

    async def scenario() -> tuple[list[float], list[ProbeEvent]]:
        clock = FakeClock()
        starts: list[float] = []
        events: list[ProbeEvent] = []

        async def hung_probe(request: ProbeRequest) -> ProbeOutcome:
            starts.append(clock.now())
            await clock.sleep(2.0)
            return ProbeOutcome(FAIL, None)

        probe_watcher = HealthWatcher(
            "agent",
            ProbePolicy(polling_interval=1.0, timeout=2.0, jitter=0.0),
            hung_probe,
            (events.append,),
            clock=clock,
            rng=random.Random(6),
        )
        task = asyncio.create_task(probe_watcher.run())
        await clock.advance(9.0)
        await cancel(task)
        return starts, events

    starts, events = asyncio.run(scenario())
    assert gaps(starts) == pytest.approx([2.0] * (len(starts) - 1))
    assert all(event.lateness_s == pytest.approx(0.0) for event in events[1:])
