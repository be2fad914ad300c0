"""Unit tests of the pure failure/recovery state machine (no threads, no clock).

The schema-ETag decisions that once lived here are tested in test_schema_refresh.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.health.state import (
    Action,
    FailureReason,
    HealthState,
    HealthStateMachine,
    ProbeKind,
    ProbeResult,
)

OK = ProbeResult.ok("instance-a", "etag-1")
FAIL = ProbeResult.failed(FailureReason.REFUSED, "connection refused")
SHUT = ProbeResult.shutting_down()


def observe_all(machine: HealthStateMachine, results: list[ProbeResult]) -> list[Action]:
    return [machine.observe(result) for result in results]


def down_indices(actions: list[Action]) -> list[int]:
    return [i for i, action in enumerate(actions) if Action.FIRE_DOWN in action]


def recovered_indices(actions: list[Action]) -> list[int]:
    return [i for i, action in enumerate(actions) if Action.FIRE_RECOVERED in action]


def new_instance_indices(actions: list[Action]) -> list[int]:
    return [i for i, action in enumerate(actions) if Action.NEW_INSTANCE in action]


# --- results ------------------------------------------------------------------------------


def test_failed_result_carries_its_reason_and_cause() -> None:
    result = ProbeResult.failed(FailureReason.TIMEOUT, "no answer in 5 s")
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.TIMEOUT
    assert result.cause == "no answer in 5 s"
    assert not result.succeeded


def test_shutting_down_result_has_the_shutting_down_reason() -> None:
    assert SHUT.kind is ProbeKind.SHUTTING_DOWN
    assert SHUT.reason is FailureReason.SHUTTING_DOWN
    assert not SHUT.succeeded


def test_ok_result_has_no_reason() -> None:
    assert OK.succeeded
    assert OK.reason is None
    assert OK.instance_id == "instance-a"
    assert OK.schema_etag == "etag-1"


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, -1, -100])
def test_threshold_below_one_raises(threshold: int) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthStateMachine(threshold)


@pytest.mark.parametrize("threshold", [0, -1, -100])
def test_recovery_threshold_below_one_raises(threshold: int) -> None:
    with pytest.raises(ValueError, match="recovery_threshold"):
        HealthStateMachine(3, recovery_threshold=threshold)


def test_starts_unknown_with_no_failures() -> None:
    machine = HealthStateMachine(3)
    assert machine.state is HealthState.UNKNOWN
    assert machine.consecutive_failures == 0
    assert machine.recovery_threshold == 1
    assert not machine.in_transition


# --- going down ---------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_down_fires_exactly_on_nth_consecutive_failure(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    for _ in range(threshold - 1):
        assert machine.observe(FAIL) == Action.NONE
        assert machine.state is not HealthState.DOWN
    assert machine.observe(FAIL) == Action.FIRE_DOWN
    assert machine.state is HealthState.DOWN


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_down_never_fires_again_during_the_outage(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    actions = observe_all(machine, [FAIL] * (threshold + 50))
    assert down_indices(actions) == [threshold - 1]
    assert all(action == Action.NONE for action in actions[threshold:])
    assert machine.state is HealthState.DOWN


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_shutting_down_during_outage_does_not_fire_again(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    actions = observe_all(machine, [FAIL] * threshold + [SHUT, FAIL, SHUT])
    assert down_indices(actions) == [threshold - 1]


@pytest.mark.parametrize("threshold", [3, 5])
def test_success_before_threshold_resets_the_count(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    sequence = ([FAIL] * (threshold - 1) + [OK]) * 4
    actions = observe_all(machine, sequence)
    assert all(Action.FIRE_DOWN not in action for action in actions)
    assert all(Action.FIRE_RECOVERED not in action for action in actions)
    assert machine.state is HealthState.UP
    assert machine.consecutive_failures == 0
    # The count really started again: N-1 failures more still do not fire ...
    assert observe_all(machine, [FAIL] * (threshold - 1)) == [Action.NONE] * (threshold - 1)
    # ... and the N-th does.
    assert machine.observe(FAIL) == Action.FIRE_DOWN


def test_consecutive_failures_counts_up() -> None:
    machine = HealthStateMachine(5)
    for expected in range(1, 4):
        machine.observe(FAIL)
        assert machine.consecutive_failures == expected
    machine.observe(OK)
    assert machine.consecutive_failures == 0


@pytest.mark.parametrize("reason", list(FailureReason))
def test_every_failure_reason_counts_towards_down(reason: FailureReason) -> None:
    machine = HealthStateMachine(2)
    failure = ProbeResult.failed(reason, f"failed: {reason}")
    assert observe_all(machine, [failure, failure]) == [Action.NONE, Action.FIRE_DOWN]


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_shutting_down_fires_down_at_once(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    assert machine.observe(SHUT) == Action.FIRE_DOWN
    assert machine.state is HealthState.DOWN


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_shutting_down_fires_only_once_even_with_failures_after(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    actions = observe_all(machine, [SHUT] + [FAIL] * (threshold + 3) + [SHUT, SHUT])
    assert down_indices(actions) == [0]


def test_shutting_down_after_some_failures_fires_at_once() -> None:
    machine = HealthStateMachine(5)
    actions = observe_all(machine, [FAIL, FAIL, SHUT, FAIL, FAIL, FAIL, SHUT])
    assert down_indices(actions) == [2]


def test_shutting_down_after_an_up_state() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    assert machine.observe(SHUT) == Action.FIRE_DOWN


# --- recovery -----------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 3])
def test_first_success_after_down_recovers(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    machine.observe(OK)
    observe_all(machine, [FAIL] * threshold)
    assert machine.state is HealthState.DOWN
    action = machine.observe(OK)
    assert action == Action.FIRE_RECOVERED
    assert machine.state is HealthState.UP
    assert machine.consecutive_failures == 0


def test_later_successes_after_recovery_ask_nothing() -> None:
    machine = HealthStateMachine(2)
    observe_all(machine, [OK, FAIL, FAIL, OK])
    assert observe_all(machine, [OK, OK, OK]) == [Action.NONE] * 3


def test_recovery_after_shutting_down() -> None:
    machine = HealthStateMachine(3)
    actions = observe_all(machine, [OK, SHUT, FAIL, OK, OK])
    assert down_indices(actions) == [1]
    assert recovered_indices(actions) == [3]
    assert actions[4] == Action.NONE


def test_down_from_unknown_then_recovery() -> None:
    machine = HealthStateMachine(2)
    assert observe_all(machine, [FAIL, FAIL]) == [Action.NONE, Action.FIRE_DOWN]
    # The first success ever: recovered, but no instance to compare with, so no restart.
    assert machine.observe(OK) == Action.FIRE_RECOVERED


def test_a_second_outage_fires_down_and_recovered_again() -> None:
    machine = HealthStateMachine(2)
    actions = observe_all(machine, [OK, FAIL, FAIL, FAIL, OK, OK, FAIL, FAIL, OK])
    assert down_indices(actions) == [2, 7]
    assert recovered_indices(actions) == [4, 8]


# --- recovery_threshold -------------------------------------------------------------------


def down_machine(recovery_threshold: int, failure_threshold: int = 2) -> HealthStateMachine:
    """A machine that has seen the agent up, then fired down."""
    machine = HealthStateMachine(failure_threshold, recovery_threshold=recovery_threshold)
    machine.observe(OK)
    observe_all(machine, [FAIL] * failure_threshold)
    assert machine.state is HealthState.DOWN
    return machine


def test_recovered_fires_exactly_on_the_third_success_with_recovery_threshold_3() -> None:
    machine = down_machine(recovery_threshold=3)
    assert machine.observe(OK) == Action.NONE
    assert machine.state is HealthState.DOWN
    assert machine.observe(OK) == Action.NONE
    assert machine.state is HealthState.DOWN
    assert machine.observe(OK) == Action.FIRE_RECOVERED
    assert machine.state is HealthState.UP
    assert observe_all(machine, [OK, OK, OK]) == [Action.NONE] * 3


@pytest.mark.parametrize("recovery_threshold", [1, 2, 3, 7])
def test_recovered_fires_on_the_rth_success(recovery_threshold: int) -> None:
    machine = down_machine(recovery_threshold)
    actions = observe_all(machine, [OK] * (recovery_threshold + 5))
    assert recovered_indices(actions) == [recovery_threshold - 1]
    assert down_indices(actions) == []


def test_a_failure_while_confirming_recovery_resets_the_count() -> None:
    machine = down_machine(recovery_threshold=3)
    actions = observe_all(machine, [OK, OK, FAIL])
    assert actions == [Action.NONE] * 3  # in particular no second FIRE_DOWN
    assert machine.state is HealthState.DOWN
    # The count started again: two successes are not enough, the third one is.
    assert observe_all(machine, [OK, OK]) == [Action.NONE, Action.NONE]
    assert machine.state is HealthState.DOWN
    assert machine.observe(OK) == Action.FIRE_RECOVERED


def test_shutting_down_while_confirming_recovery_fires_no_second_down() -> None:
    machine = down_machine(recovery_threshold=2)
    assert observe_all(machine, [OK, SHUT, OK]) == [Action.NONE] * 3
    assert machine.state is HealthState.DOWN
    assert machine.observe(OK) == Action.FIRE_RECOVERED


def test_recovery_threshold_does_not_delay_the_first_up() -> None:
    # Recovery is from DOWN only: a first success from UNKNOWN is UP at once.
    machine = HealthStateMachine(3, recovery_threshold=3)
    assert machine.observe(OK) == Action.NONE
    assert machine.state is HealthState.UP


def test_recovery_threshold_does_not_change_when_down_fires() -> None:
    machine = HealthStateMachine(3, recovery_threshold=4)
    machine.observe(OK)
    assert observe_all(machine, [FAIL, FAIL, FAIL]) == [Action.NONE, Action.NONE, Action.FIRE_DOWN]


# --- in_transition ------------------------------------------------------------------------


def test_in_transition_while_failing_but_not_yet_down() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    assert not machine.in_transition
    machine.observe(FAIL)
    assert machine.in_transition
    machine.observe(FAIL)
    assert machine.in_transition
    machine.observe(FAIL)
    assert machine.state is HealthState.DOWN
    assert not machine.in_transition  # down is settled: back to the normal interval


def test_in_transition_while_failing_from_unknown() -> None:
    machine = HealthStateMachine(3)
    machine.observe(FAIL)
    assert machine.state is HealthState.UNKNOWN
    assert machine.in_transition


def test_not_in_transition_during_a_settled_outage() -> None:
    machine = down_machine(recovery_threshold=3)
    for _ in range(5):
        machine.observe(FAIL)
        assert not machine.in_transition


def test_in_transition_while_confirming_recovery() -> None:
    machine = down_machine(recovery_threshold=3)
    assert not machine.in_transition
    machine.observe(OK)
    assert machine.in_transition
    machine.observe(OK)
    assert machine.in_transition
    machine.observe(OK)
    assert machine.state is HealthState.UP
    assert not machine.in_transition


def test_a_failure_while_confirming_recovery_ends_the_transition() -> None:
    machine = down_machine(recovery_threshold=3)
    machine.observe(OK)
    assert machine.in_transition
    machine.observe(FAIL)
    assert machine.state is HealthState.DOWN
    assert not machine.in_transition


def test_a_success_ends_the_failing_transition() -> None:
    machine = HealthStateMachine(3)
    observe_all(machine, [OK, FAIL])
    assert machine.in_transition
    machine.observe(OK)
    assert not machine.in_transition


def test_shutting_down_goes_straight_to_down_without_transition() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    machine.observe(SHUT)
    assert not machine.in_transition


# --- new instance -------------------------------------------------------------------------


def test_first_success_ever_is_not_a_new_instance() -> None:
    machine = HealthStateMachine(3)
    assert machine.observe(ProbeResult.ok("instance-a", "etag-1")) == Action.NONE
    assert machine.state is HealthState.UP


def test_first_success_without_any_etag_asks_nothing() -> None:
    machine = HealthStateMachine(3)
    assert machine.observe(ProbeResult.ok("instance-a")) == Action.NONE


def test_changed_instance_id_is_a_new_instance_without_failure() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    action = machine.observe(ProbeResult.ok("instance-b", "etag-1"))
    assert action == Action.NEW_INSTANCE
    # The new id is remembered: the next identical success asks nothing.
    assert machine.observe(ProbeResult.ok("instance-b", "etag-1")) == Action.NONE


def test_changed_instance_id_after_failures_below_threshold() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    observe_all(machine, [FAIL, FAIL])
    assert machine.observe(ProbeResult.ok("instance-b", "etag-1")) == Action.NEW_INSTANCE


def test_changed_instance_id_on_recovery_is_both_recovered_and_new_instance() -> None:
    machine = HealthStateMachine(2)
    observe_all(machine, [ProbeResult.ok("instance-a"), FAIL, FAIL])
    action = machine.observe(ProbeResult.ok("instance-b"))
    assert action == Action.FIRE_RECOVERED | Action.NEW_INSTANCE


def test_same_instance_on_recovery_is_not_a_new_instance() -> None:
    machine = HealthStateMachine(2)
    observe_all(machine, [OK, FAIL, FAIL])
    assert machine.observe(OK) == Action.FIRE_RECOVERED


def test_changed_instance_id_while_confirming_recovery_is_reported_once() -> None:
    machine = down_machine(recovery_threshold=3)
    actions = observe_all(
        machine,
        [ProbeResult.ok("instance-b"), ProbeResult.ok("instance-b"), ProbeResult.ok("instance-b")],
    )
    assert actions == [Action.NEW_INSTANCE, Action.NONE, Action.FIRE_RECOVERED]


def test_changed_schema_etag_alone_is_not_a_new_instance() -> None:
    # The schema ETag is no longer the state machine's business (see SchemaRefreshDecision).
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    assert machine.observe(ProbeResult.ok("instance-a", "etag-2")) == Action.NONE
    assert machine.observe(ProbeResult.ok("instance-a")) == Action.NONE


def test_same_identity_asks_nothing() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    for _ in range(5):
        assert machine.observe(ProbeResult.ok("instance-a", "etag-1")) == Action.NONE


def test_failures_never_report_a_new_instance() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    actions = observe_all(machine, [FAIL, SHUT, FAIL, FAIL])
    assert new_instance_indices(actions) == []


# --- states -------------------------------------------------------------------------------


def test_state_unknown_to_up() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    assert machine.state is HealthState.UP


def test_state_stays_unknown_below_threshold_then_down() -> None:
    machine = HealthStateMachine(3)
    machine.observe(FAIL)
    machine.observe(FAIL)
    assert machine.state is HealthState.UNKNOWN
    machine.observe(FAIL)
    assert machine.state is HealthState.DOWN


def test_state_up_stays_up_below_threshold() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    machine.observe(FAIL)
    machine.observe(FAIL)
    assert machine.state is HealthState.UP


def test_state_unknown_to_down_on_shutting_down() -> None:
    machine = HealthStateMachine(3)
    machine.observe(SHUT)
    assert machine.state is HealthState.DOWN


# --- properties ---------------------------------------------------------------------------

KINDS = {"ok": OK, "fail": FAIL, "shut": SHUT}
outcomes_ok_fail = st.lists(st.sampled_from(["ok", "fail"]), max_size=60)
outcomes_all = st.lists(st.sampled_from(["ok", "fail", "shut"]), max_size=60)
thresholds = st.integers(min_value=1, max_value=6)
recovery_thresholds = st.integers(min_value=1, max_value=5)


def runs(outcomes: list[str]) -> list[tuple[bool, int, bool]]:
    """Each maximal run of OKs or of non-OKs: (is OK, length, contains a shut)."""
    result: list[tuple[bool, int, bool]] = []
    for outcome in outcomes:
        is_ok = outcome == "ok"
        if result and result[-1][0] == is_ok:
            _, length, has_shut = result[-1]
            result[-1] = (is_ok, length + 1, has_shut or outcome == "shut")
        else:
            result.append((is_ok, 1, outcome == "shut"))
    return result


def non_ok_runs(outcomes: list[str]) -> list[tuple[int, bool, bool]]:
    """Each maximal run of non-OK outcomes: (length, contains shut, followed by an OK)."""
    all_runs = runs(outcomes)
    return [
        (length, has_shut, i + 1 < len(all_runs))
        for i, (is_ok, length, has_shut) in enumerate(all_runs)
        if not is_ok
    ]


def expected_downs_and_recoveries(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> tuple[int, int]:
    """Counted run by run: a down needs a long enough (or shut) failure run while not down;
    a recovery needs a run of at least `recovery_threshold` OKs while down."""
    down = False
    downs = recoveries = 0
    for is_ok, length, has_shut in runs(outcomes):
        if not is_ok and not down and (length >= threshold or has_shut):
            down = True
            downs += 1
        elif is_ok and down and length >= recovery_threshold:
            down = False
            recoveries += 1
    return downs, recoveries


def run_machine(outcomes: list[str], threshold: int, recovery_threshold: int = 1) -> list[Action]:
    machine = HealthStateMachine(threshold, recovery_threshold=recovery_threshold)
    return observe_all(machine, [KINDS[o] for o in outcomes])


@given(outcomes_ok_fail, thresholds)
def test_property_downs_equal_long_failure_runs(outcomes: list[str], threshold: int) -> None:
    expected = sum(1 for length, _, _ in non_ok_runs(outcomes) if length >= threshold)
    actions = run_machine(outcomes, threshold)
    assert len(down_indices(actions)) == expected


@given(outcomes_all, thresholds)
def test_property_downs_with_shutting_down(outcomes: list[str], threshold: int) -> None:
    expected = sum(
        1 for length, has_shut, _ in non_ok_runs(outcomes) if length >= threshold or has_shut
    )
    actions = run_machine(outcomes, threshold)
    assert len(down_indices(actions)) == expected


@given(outcomes_all, thresholds)
def test_property_recovered_count(outcomes: list[str], threshold: int) -> None:
    expected = sum(
        1
        for length, has_shut, followed in non_ok_runs(outcomes)
        if (length >= threshold or has_shut) and followed
    )
    actions = run_machine(outcomes, threshold)
    assert len(recovered_indices(actions)) == expected


@given(outcomes_all, thresholds, recovery_thresholds)
def test_property_recovered_count_with_recovery_threshold(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> None:
    expected_downs, expected_recoveries = expected_downs_and_recoveries(
        outcomes, threshold, recovery_threshold
    )
    actions = run_machine(outcomes, threshold, recovery_threshold)
    assert len(recovered_indices(actions)) == expected_recoveries
    assert len(down_indices(actions)) == expected_downs


@given(outcomes_all, thresholds, recovery_thresholds)
def test_property_recovered_fires_on_the_rth_success_of_a_run(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> None:
    actions = run_machine(outcomes, threshold, recovery_threshold)
    for index in recovered_indices(actions):
        window = outcomes[index - recovery_threshold + 1 : index + 1]
        assert window == ["ok"] * recovery_threshold
        assert index - recovery_threshold < 0 or outcomes[index - recovery_threshold] != "ok"


@given(outcomes_all, thresholds, recovery_thresholds)
def test_property_downs_and_recovereds_alternate(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> None:
    actions = run_machine(outcomes, threshold, recovery_threshold)
    events: list[str] = []
    for action in actions:
        assert not (Action.FIRE_DOWN in action and Action.FIRE_RECOVERED in action)
        if Action.FIRE_DOWN in action:
            events.append("down")
        if Action.FIRE_RECOVERED in action:
            events.append("recovered")
    expected = ["down" if i % 2 == 0 else "recovered" for i in range(len(events))]
    assert events == expected


@given(outcomes_all, thresholds)
def test_property_kinds_of_actions_match_outcome(outcomes: list[str], threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    for outcome in outcomes:
        action = machine.observe(KINDS[outcome])
        if KINDS[outcome].kind is ProbeKind.OK:
            assert Action.FIRE_DOWN not in action
            assert machine.state is HealthState.UP
        else:
            assert Action.FIRE_RECOVERED not in action
            assert Action.NEW_INSTANCE not in action


@given(outcomes_all, thresholds, recovery_thresholds)
def test_property_state_follows_the_actions(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> None:
    machine = HealthStateMachine(threshold, recovery_threshold=recovery_threshold)
    for outcome in outcomes:
        before = machine.state
        action = machine.observe(KINDS[outcome])
        if Action.FIRE_DOWN in action:
            assert before is not HealthState.DOWN
            assert machine.state is HealthState.DOWN
        elif Action.FIRE_RECOVERED in action:
            assert before is HealthState.DOWN
            assert machine.state is HealthState.UP
        elif before is HealthState.DOWN:
            assert machine.state is HealthState.DOWN  # only FIRE_RECOVERED leaves DOWN
        else:
            assert machine.state is not HealthState.DOWN  # only FIRE_DOWN enters it


instance_ids = st.sampled_from(["instance-a", "instance-b", "instance-c"])
id_outcomes = st.lists(st.one_of(instance_ids, st.sampled_from(["fail", "shut"])), max_size=60)


@given(id_outcomes, thresholds, recovery_thresholds)
def test_property_new_instance_on_each_change_of_id(
    outcomes: list[str], threshold: int, recovery_threshold: int
) -> None:
    machine = HealthStateMachine(threshold, recovery_threshold=recovery_threshold)
    results = [KINDS[o] if o in ("fail", "shut") else ProbeResult.ok(o, "etag-1") for o in outcomes]
    actions = observe_all(machine, results)
    seen_ids = [o for o in outcomes if o not in ("fail", "shut")]
    expected = sum(1 for earlier, later in itertools.pairwise(seen_ids) if earlier != later)
    assert len(new_instance_indices(actions)) == expected
    assert all(results[i].succeeded for i in new_instance_indices(actions))
