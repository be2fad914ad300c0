"""Unit tests of SchemaRefreshDecision: which probe events call for a schema fetch (pure).

Events come from a real HealthStateMachine, built the way the watcher builds them, so that
every event tested is one that can happen.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.state import (
    FailureReason,
    HealthState,
    HealthStateMachine,
    ProbeResult,
)
from rpc_datasource.schema.refresh import SchemaRefreshDecision

FAIL = ProbeResult.failed(FailureReason.CONNECTION, "connection reset")
SHUT = ProbeResult.shutting_down()


class Agent:
    """A state machine and a refresh decision fed the same probes, as the datasource does."""

    def __init__(
        self,
        loaded_etag: str | None,
        failure_threshold: int = 3,
        recovery_threshold: int = 1,
    ) -> None:
        self.machine = HealthStateMachine(failure_threshold, recovery_threshold)
        self.decision = SchemaRefreshDecision(loaded_etag)

    def event(self, result: ProbeResult) -> ProbeEvent:
        """Observe `result` and return the event the watcher would hand to its hooks."""
        before = self.machine.state
        actions = self.machine.observe(result)
        return ProbeEvent(
            client="agent",
            result=result,
            latency_s=0.01,
            lateness_s=0.0,
            state_before=before,
            state_after=self.machine.state,
            consecutive_failures=self.machine.consecutive_failures,
            actions=actions,
        )

    def asks(self, result: ProbeResult) -> bool:
        """Whether this probe calls for a schema fetch."""
        return self.decision.wants_fetch(self.event(result))

    def asks_each(self, results: list[ProbeResult]) -> list[bool]:
        return [self.asks(result) for result in results]


def ok(instance_id: str = "instance-a", etag: str | None = "etag-1") -> ProbeResult:
    return ProbeResult.ok(instance_id, etag)


# --- first success ------------------------------------------------------------------------


def test_first_success_without_any_etag_asks_nothing() -> None:
    agent = Agent(loaded_etag=None)
    assert not agent.asks(ok(etag=None))
    assert agent.machine.state is HealthState.UP


def test_first_success_with_the_loaded_etag_asks_nothing() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert not agent.asks(ok(etag="etag-1"))
    assert agent.machine.state is HealthState.UP


def test_first_success_with_another_etag_than_the_loaded_one_asks() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks(ok(etag="etag-2"))
    assert agent.machine.state is HealthState.UP


def test_first_success_with_an_etag_when_the_loaded_schema_had_none_asks() -> None:
    # The loaded schema's ETag is unknown: an advertised one may or may not be it.
    agent = Agent(loaded_etag=None)
    assert agent.asks(ok(etag="etag-1"))
    agent.decision.fetched("etag-1")
    assert not agent.asks(ok(etag="etag-1"))


# --- schema changes -----------------------------------------------------------------------


def test_changed_schema_etag_asks_a_fetch() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert not agent.asks(ok(etag="etag-1"))
    assert agent.asks(ok(etag="etag-2"))
    agent.decision.fetched("etag-2")
    assert not agent.asks(ok(etag="etag-2"))


def test_changed_schema_etag_keeps_asking_until_fetched() -> None:
    # Nothing is remembered from the probe: only a fetch changes what is loaded.
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks_each([ok(etag="etag-2"), ok(etag="etag-2")]) == [True, True]
    agent.decision.fetched("etag-2")
    assert not agent.asks(ok(etag="etag-2"))


def test_etag_going_back_to_the_loaded_one_asks_nothing() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks(ok(etag="etag-2"))
    assert not agent.asks(ok(etag="etag-1"))


def test_same_identity_asks_nothing() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks_each([ok()] * 5) == [False] * 5


def test_success_without_etag_is_not_a_schema_change() -> None:
    # A success that carries no schema_etag shows no new schema; asking a fetch on it would
    # re-read the schema at every probe.
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks_each([ok(etag=None), ok(etag=None)]) == [False, False]


def test_fetched_without_an_etag_keeps_the_loaded_one() -> None:
    # A 304 (or a 200 without an ETag header) does not forget which schema is loaded.
    agent = Agent(loaded_etag="etag-1")
    agent.decision.fetched(None)
    assert agent.decision.loaded_etag == "etag-1"
    assert not agent.asks(ok(etag="etag-1"))


def test_a_fetch_answered_without_an_etag_takes_the_advertised_one() -> None:
    # An agent whose /rpc-schema leaves the ETag header out while health advertises one:
    # after one fetch the advertised ETag counts as loaded, so it is not fetched forever.
    agent = Agent(loaded_etag=None)
    assert agent.asks(ok(etag="etag-2"))
    agent.decision.fetched(None)
    assert agent.decision.loaded_etag == "etag-2"
    assert agent.asks_each([ok(etag="etag-2"), ok(etag="etag-2")]) == [False, False]


# --- restarts -----------------------------------------------------------------------------


def test_restart_with_the_loaded_etag_asks_no_fetch() -> None:
    # "A new instance_id whose schema_etag is the one already loaded needs no schema request."
    agent = Agent(loaded_etag="etag-1")
    agent.asks(ok("instance-a", "etag-1"))
    event = agent.event(ok("instance-b", "etag-1"))
    assert event.restarted
    assert not agent.decision.wants_fetch(event)


def test_restart_without_any_etag_asks_one_fetch() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert not agent.asks(ok("instance-a", None))
    event = agent.event(ok("instance-b", None))
    assert event.restarted
    assert agent.decision.wants_fetch(event)
    agent.decision.fetched("etag-1")
    # The same instance again: nothing to compare, nothing new, no fetch.
    assert not agent.asks(ok("instance-b", None))


def test_restart_with_another_etag_asks_a_fetch() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.asks(ok("instance-a", "etag-1"))
    assert agent.asks(ok("instance-b", "etag-2"))


def test_restart_after_failures_below_threshold_with_the_loaded_etag_asks_nothing() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks_each([ok("instance-a"), FAIL, FAIL, ok("instance-b")]) == [False] * 4
    assert agent.machine.state is HealthState.UP


# --- failed fetches -----------------------------------------------------------------------


def test_after_a_failed_fetch_the_next_success_asks_again_once() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.asks(ok())
    agent.decision.ask_again()
    assert agent.asks(ok())
    agent.decision.fetched("etag-1")
    assert not agent.asks(ok())


def test_a_failed_fetch_is_asked_again_until_one_ends() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.asks(ok())
    agent.decision.ask_again()
    assert agent.asks_each([ok(), ok()]) == [True, True]
    agent.decision.fetched("etag-1")
    assert agent.asks_each([ok(), ok()]) == [False, False]


def test_a_failed_fetch_survives_failures_in_between() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=5)
    agent.asks(ok())
    agent.decision.ask_again()
    assert agent.asks_each([FAIL, FAIL]) == [False, False]
    assert agent.asks(ok())
    agent.decision.fetched("etag-1")
    assert not agent.asks(ok())


def test_a_failed_fetch_after_recovery_asks_again() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=1)
    agent.asks(ok())
    agent.asks(FAIL)
    assert agent.asks(ok())  # the recovery
    agent.decision.ask_again()  # ... whose fetch failed
    assert agent.asks(ok())
    agent.decision.fetched("etag-1")
    assert not agent.asks(ok())


# --- recovery -----------------------------------------------------------------------------


def test_recovery_asks_a_fetch_even_with_the_loaded_etag() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=2)
    assert agent.asks_each([ok(), FAIL, FAIL]) == [False, False, False]
    event = agent.event(ok())
    assert event.recovered
    assert agent.decision.wants_fetch(event)
    agent.decision.fetched("etag-1")
    assert not agent.asks(ok())


def test_recovery_after_shutting_down_asks_a_fetch() -> None:
    agent = Agent(loaded_etag="etag-1")
    assert agent.asks_each([ok(), SHUT, ok()]) == [False, False, True]


def test_success_while_still_down_asks_nothing() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=1, recovery_threshold=3)
    agent.asks(ok())
    agent.asks(FAIL)
    agent.decision.ask_again()  # even with a retry pending
    # A restart with a new schema, seen while the recovery is still being confirmed.
    confirming = agent.asks_each([ok("instance-b", "etag-2"), ok("instance-b", "etag-2")])
    assert confirming == [False, False]
    assert agent.machine.state is HealthState.DOWN
    assert agent.asks(ok("instance-b", "etag-2"))  # the third success: recovered
    assert agent.machine.state is HealthState.UP


def test_restart_without_etag_while_still_down_is_fetched_on_recovery() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=1, recovery_threshold=2)
    agent.asks(ok("instance-a", None))
    agent.asks(FAIL)
    restart = agent.event(ok("instance-b", None))
    assert restart.restarted
    assert not agent.decision.wants_fetch(restart)
    assert agent.asks(ok("instance-b", None))


# --- failures -----------------------------------------------------------------------------


def test_failures_never_ask_a_fetch() -> None:
    agent = Agent(loaded_etag="etag-1", failure_threshold=2)
    agent.asks(ok())
    agent.decision.ask_again()
    assert agent.asks_each([FAIL, FAIL, FAIL, SHUT]) == [False] * 4


def test_shutting_down_never_asks_a_fetch() -> None:
    agent = Agent(loaded_etag=None)
    agent.decision.ask_again()
    assert not agent.asks(SHUT)


# --- properties ---------------------------------------------------------------------------

probes = st.lists(
    st.one_of(
        st.builds(
            ProbeResult.ok,
            st.sampled_from(["instance-a", "instance-b"]),
            st.sampled_from(["etag-1", "etag-2", None]),
        ),
        st.sampled_from([FAIL, SHUT]),
    ),
    max_size=40,
)
loaded_etags = st.sampled_from(["etag-1", "etag-2", None])
failure_thresholds = st.integers(min_value=1, max_value=4)
recovery_thresholds = st.integers(min_value=1, max_value=3)


@given(probes, loaded_etags, failure_thresholds, recovery_thresholds)
def test_property_never_asks_on_a_failure_or_unless_up(
    results: list[ProbeResult], loaded: str | None, threshold: int, recovery: int
) -> None:
    agent = Agent(loaded, threshold, recovery)
    for result in results:
        event = agent.event(result)
        if agent.decision.wants_fetch(event):
            assert event.result.succeeded
            assert event.state_after is HealthState.UP
        else:
            agent.decision.ask_again()  # the worst case: every fetch is pending


@given(probes, loaded_etags, failure_thresholds, recovery_thresholds)
def test_property_with_fetches_that_succeed_nothing_is_asked_without_a_reason(
    results: list[ProbeResult], loaded: str | None, threshold: int, recovery: int
) -> None:
    agent = Agent(loaded, threshold, recovery)
    for result in results:
        loaded_before = agent.decision.loaded_etag
        event = agent.event(result)
        asked = agent.decision.wants_fetch(event)
        changed = result.schema_etag is not None and result.schema_etag != loaded_before
        unknown_restart = event.restarted and result.schema_etag is None
        reason = event.recovered or changed or unknown_restart
        if event.state_after is HealthState.UP and result.succeeded:
            assert asked == reason
        else:
            assert not asked
        if asked:
            # The agent serves the schema it advertises: the fetch brings that ETag.
            agent.decision.fetched(result.schema_etag)


# --- workers that disagree ----------------------------------------------------------------


def alternate(agent: Agent, etags: list[str], gap: float) -> list[bool]:
    """Feed probes of one instance advertising `etags` in turn, `gap` s apart; each fetch
    asked for ends with the advertised ETag loaded, as the datasource's would."""
    asked = []
    for number, etag in enumerate(etags):
        wanted = agent.decision.wants_fetch(agent.event(ok(etag=etag)), now=number * gap)
        if wanted:
            agent.decision.fetched(etag)
        asked.append(wanted)
    return asked


def test_one_instance_alternating_two_etags_is_named_and_fetched_once_per_interval() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.decision.min_fetch_gap_s = 1.0
    asked = alternate(agent, ["etag-1", "etag-2"] * 3 + ["etag-1"], 0.25)
    # etag-2 is new: fetched at once (0.25 s). etag-1 again: the workers disagree; the next
    # fetch waits out the interval from the last one: etag-1 at 1.5 s is the first to go.
    assert set(agent.decision.disagreeing or ()) == {"etag-1", "etag-2"}
    assert asked == [False, True, False, False, False, False, True]


def test_a_single_change_that_stays_is_fetched_at_once_and_is_no_disagreement() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.decision.min_fetch_gap_s = 30.0
    asked = alternate(agent, ["etag-1", "etag-2", "etag-2", "etag-3", "etag-3"], 0.1)
    assert asked == [False, True, False, True, False]
    assert agent.decision.disagreeing is None


def test_a_new_instance_id_clears_the_disagreement_and_is_fetched_at_once() -> None:
    agent = Agent(loaded_etag="etag-1")
    agent.decision.min_fetch_gap_s = 30.0
    alternate(agent, ["etag-1", "etag-2", "etag-1"], 0.1)
    assert agent.decision.disagreeing is not None
    redeployed = agent.event(ok(instance_id="instance-b", etag="etag-3"))
    assert agent.decision.wants_fetch(redeployed, now=0.4)
    assert agent.decision.disagreeing is None
