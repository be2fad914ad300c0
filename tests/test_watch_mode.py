"""Watch mode's decisions, pure and on a fake clock: held requests, fallback, failures."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import FailureReason, HealthState, ProbeResult
from rpc_datasource.health.watch_rules import (
    PLAIN,
    WATCH_RETRY_EVERY,
    HeldRequestTracker,
    ProbeRequest,
)
from rpc_datasource.runtime.watcher import HealthWatcher
from rpc_datasource.transport.probe import ProbeOutcome
from tests.support.fake_clock import FakeClock

WATCH = ProbePolicy(polling_interval=10.0, mode="watch", watch_wait=25.0, jitter=0.0)
OK = ProbeResult.ok("instance-a", '"schema"')
FAIL = ProbeResult.failed(FailureReason.CONNECTION, "connection reset")
SHUT = ProbeResult.shutting_down()


# --- HeldRequestTracker ---------------------------------------------------------------------------


def test_poll_mode_never_holds() -> None:
    tracker = HeldRequestTracker(ProbePolicy(mode="poll"), "agent")
    assert tracker.next_request(agent_up=True) == PLAIN
    assert tracker.delay_after(PLAIN, True, '"h1"', 0.01) is None
    assert tracker.next_request(agent_up=True) == PLAIN


def test_watch_mode_holds_once_the_state_etag_is_known_and_re_asks_at_once() -> None:
    tracker = HeldRequestTracker(WATCH, "agent")
    assert tracker.next_request(agent_up=True) == PLAIN  # nothing seen yet
    assert tracker.delay_after(PLAIN, True, '"h1"', 0.01) == 0.0
    held = tracker.next_request(agent_up=True)
    assert held == ProbeRequest(wait=25.0, if_none_match='"h1"')
    # Held to the end of the wait with nothing changed: ask again at once.
    assert tracker.delay_after(held, True, '"h1"', 25.0) == 0.0
    # Answered early because the state changed: at once too, with the new ETag.
    assert tracker.delay_after(held, True, '"h2"', 0.01) == 0.0
    assert tracker.next_request(agent_up=True).if_none_match == '"h2"'


def test_no_watch_while_the_agent_is_not_up() -> None:
    tracker = HeldRequestTracker(WATCH, "agent")
    tracker.delay_after(PLAIN, True, '"h1"', 0.01)
    assert tracker.next_request(agent_up=False) == PLAIN


def test_a_failure_forgets_the_etag_and_leaves_the_delay_to_the_policy() -> None:
    tracker = HeldRequestTracker(WATCH, "agent")
    tracker.delay_after(PLAIN, True, '"h1"', 0.01)
    held = tracker.next_request(agent_up=True)
    assert tracker.delay_after(held, False, None, 0.01) is None
    assert tracker.next_request(agent_up=True) == PLAIN


def test_an_early_unchanged_answer_falls_back_to_polling_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rpc_datasource.health.watch_rules")
    tracker = HeldRequestTracker(WATCH, "agent")
    tracker.delay_after(PLAIN, True, '"h1"', 0.01)
    held = tracker.next_request(agent_up=True)
    assert held.held
    assert tracker.delay_after(held, True, '"h1"', 0.002) is None  # not held: fall back
    assert tracker.not_holding
    for _ in range(3):
        # Plain probes at the polling interval (each bounded by `timeout`, not wait + timeout),
        # and a watch again every WATCH_RETRY_EVERY successes, sent right after the success.
        for _ in range(WATCH_RETRY_EVERY - 1):
            assert tracker.next_request(agent_up=True) == PLAIN
            assert tracker.delay_after(PLAIN, True, '"h1"', 0.01) is None
        assert tracker.next_request(agent_up=True) == PLAIN
        assert tracker.delay_after(PLAIN, True, '"h1"', 0.01) == 0.0
        retry = tracker.next_request(agent_up=True)
        assert retry.held
        assert tracker.delay_after(retry, True, '"h1"', 0.002) is None  # still not holding
    assert sum("polling every 10 s" in record.getMessage() for record in caplog.records) == 1

    for _ in range(WATCH_RETRY_EVERY):
        tracker.next_request(agent_up=True)
        tracker.delay_after(PLAIN, True, '"h1"', 0.01)
    retry = tracker.next_request(agent_up=True)
    assert retry.held
    assert tracker.delay_after(retry, True, '"h1"', 25.0) == 0.0  # held again
    assert not tracker.not_holding
    assert "holds watches again" in caplog.text
    assert tracker.next_request(agent_up=True).held


def test_an_agent_without_a_health_etag_is_polled() -> None:
    tracker = HeldRequestTracker(WATCH, "agent")
    assert tracker.delay_after(PLAIN, True, None, 0.01) is None
    assert tracker.not_holding
    assert tracker.next_request(agent_up=True) == PLAIN


def test_a_short_wait_answered_at_its_end_is_not_early() -> None:
    tracker = HeldRequestTracker(
        ProbePolicy(polling_interval=10.0, mode="watch", watch_wait=0.2), "agent"
    )
    tracker.delay_after(PLAIN, True, '"h1"', 0.01)
    held = tracker.next_request(agent_up=True)
    assert tracker.delay_after(held, True, '"h1"', 0.2) == 0.0
    assert not tracker.not_holding


# --- the watcher in watch mode, on a fake clock --------------------------------------------------


class HoldingAgent:
    """A fake agent that holds matching watches on the fake clock until its state changes."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.etag = '"h1"'
        self.answer = OK
        self.requests: list[tuple[float, ProbeRequest]] = []
        self.changed = asyncio.Event()

    async def probe(self, request: ProbeRequest) -> ProbeOutcome:
        started = self.clock.now()
        self.requests.append((started, request))
        if request.held and request.if_none_match == self.etag:
            assert request.wait is not None
            sleeper = asyncio.ensure_future(self.clock.sleep(request.wait))
            change = asyncio.ensure_future(self.changed.wait())
            await asyncio.wait([sleeper, change], return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            change.cancel()
        return ProbeOutcome(self.answer, self.clock.now() - started, self.etag)

    def change(self, answer: ProbeResult, etag: str) -> None:
        self.answer = answer
        self.etag = etag
        self.changed.set()


def test_one_held_request_at_a_time_re_issued_when_answered() -> None:
    async def scenario() -> list[tuple[float, ProbeRequest]]:
        clock = FakeClock()
        agent = HoldingAgent(clock)
        watcher = HealthWatcher("agent", WATCH, agent.probe, clock=clock, rng=random.Random(1))
        task = asyncio.create_task(watcher.run())
        await clock.advance(101.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return agent.requests

    requests = asyncio.run(scenario())
    held = [request for _, request in requests if request.held]
    # One plain probe within the first second, then a watch at once and every 25 s after.
    assert not requests[0][1].held and requests[0][0] <= 1.0
    assert len(held) == 5
    starts = [at for at, request in requests if request.held]
    assert [later - earlier for earlier, later in itertools.pairwise(starts)] == [
        pytest.approx(25.0)
    ] * 4


def test_a_held_request_answered_503_fires_down_at_once() -> None:
    async def scenario() -> tuple[list[ProbeEvent], float]:
        clock = FakeClock()
        agent = HoldingAgent(clock)
        events: list[ProbeEvent] = []
        watcher = HealthWatcher(
            "agent", WATCH, agent.probe, (events.append,), clock=clock, rng=random.Random(2)
        )
        task = asyncio.create_task(watcher.run())
        await clock.advance(5.0)  # up, a watch held
        agent.change(SHUT, '"h-shutting-down"')
        changed_at = clock.now()
        await clock.advance(0.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        down_at = changed_at if events[-1].went_down else -1.0
        return events, down_at

    events, down_at = asyncio.run(scenario())
    assert [event.went_down for event in events].count(True) == 1
    assert events[-1].state_after is HealthState.DOWN
    assert events[-1].reason is FailureReason.SHUTTING_DOWN
    assert down_at >= 0


def test_a_cut_held_request_is_a_failure_then_re_probes_at_the_retry_interval() -> None:
    async def scenario() -> tuple[list[tuple[float, ProbeRequest]], list[ProbeEvent]]:
        clock = FakeClock()
        agent = HoldingAgent(clock)
        events: list[ProbeEvent] = []
        policy = ProbePolicy(
            polling_interval=10.0,
            failure_retry_interval=2.0,
            failure_threshold=3,
            mode="watch",
            watch_wait=25.0,
            jitter=0.0,
        )
        watcher = HealthWatcher(
            "agent", policy, agent.probe, (events.append,), clock=clock, rng=random.Random(3)
        )
        task = asyncio.create_task(watcher.run())
        await clock.advance(5.0)
        agent.change(FAIL, '"h1"')  # the held request is cut: kill -9
        await clock.advance(4.0)  # two re-probes, 2 s apart: the third failure is down
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return agent.requests, events

    requests, events = asyncio.run(scenario())
    failures = [event for event in events if not event.result.succeeded]
    assert len(failures) == 3
    assert failures[-1].went_down
    # Cut at 5 s: the re-probes follow at the retry interval, 2 s apart.
    assert [at for at, _ in requests[-2:]] == [pytest.approx(7.0), pytest.approx(9.0)]
    assert not any(request.held for _, request in requests[-2:])  # re-probes are plain
