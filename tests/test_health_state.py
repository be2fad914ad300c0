"""Unit tests of the pure failure/recovery state machine (no threads, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.health_state import (
    Action,
    HealthState,
    HealthStateMachine,
    ProbeKind,
    ProbeResult,
)

OK = ProbeResult.ok("instance-a", "etag-1")
FAIL = ProbeResult.failed("connection refused")
SHUT = ProbeResult.shutting_down()


def observe_all(machine: HealthStateMachine, results: list[ProbeResult]) -> list[Action]:
    return [machine.observe(result) for result in results]


def down_indices(actions: list[Action]) -> list[int]:
    return [i for i, action in enumerate(actions) if Action.FIRE_DOWN in action]


def recovered_indices(actions: list[Action]) -> list[int]:
    return [i for i, action in enumerate(actions) if Action.FIRE_RECOVERED in action]


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, -1, -100])
def test_threshold_below_one_raises(threshold: int) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthStateMachine(threshold)


def test_starts_unknown_with_no_failures() -> None:
    machine = HealthStateMachine(3)
    assert machine.state is HealthState.UNKNOWN
    assert machine.consecutive_failures == 0


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
def test_first_success_after_down_recovers_and_checks_schema(threshold: int) -> None:
    machine = HealthStateMachine(threshold)
    machine.observe(OK)
    observe_all(machine, [FAIL] * threshold)
    assert machine.state is HealthState.DOWN
    action = machine.observe(OK)
    assert Action.FIRE_RECOVERED in action
    assert Action.CHECK_SCHEMA in action
    assert Action.FIRE_DOWN not in action
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
    action = machine.observe(OK)
    assert Action.FIRE_RECOVERED in action
    assert Action.CHECK_SCHEMA in action


def test_a_second_outage_fires_down_and_recovered_again() -> None:
    machine = HealthStateMachine(2)
    actions = observe_all(machine, [OK, FAIL, FAIL, FAIL, OK, OK, FAIL, FAIL, OK])
    assert down_indices(actions) == [2, 7]
    assert recovered_indices(actions) == [4, 8]


# --- schema checks ------------------------------------------------------------------------


def test_first_success_without_known_etag_asks_nothing() -> None:
    machine = HealthStateMachine(3)
    assert machine.observe(ProbeResult.ok("instance-a", "etag-1")) == Action.NONE
    assert machine.state is HealthState.UP


def test_first_success_without_any_etag_asks_nothing() -> None:
    machine = HealthStateMachine(3)
    assert machine.observe(ProbeResult.ok("instance-a")) == Action.NONE


def test_changed_instance_id_asks_schema_check_without_failure() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    action = machine.observe(ProbeResult.ok("instance-b", "etag-1"))
    assert action == Action.CHECK_SCHEMA
    # The new id is remembered: the next identical success asks nothing.
    assert machine.observe(ProbeResult.ok("instance-b", "etag-1")) == Action.NONE


def test_changed_instance_id_after_failures_below_threshold() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    observe_all(machine, [FAIL, FAIL])
    assert machine.observe(ProbeResult.ok("instance-b", "etag-1")) == Action.CHECK_SCHEMA


def test_changed_schema_etag_asks_schema_check() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    assert machine.observe(ProbeResult.ok("instance-a", "etag-2")) == Action.CHECK_SCHEMA
    assert machine.observe(ProbeResult.ok("instance-a", "etag-2")) == Action.NONE


def test_same_identity_asks_nothing() -> None:
    machine = HealthStateMachine(3)
    machine.observe(ProbeResult.ok("instance-a", "etag-1"))
    for _ in range(5):
        assert machine.observe(ProbeResult.ok("instance-a", "etag-1")) == Action.NONE


def test_seeded_etag_different_on_first_success_asks_schema_check() -> None:
    machine = HealthStateMachine(3, known_schema_etag="etag-1")
    assert machine.observe(ProbeResult.ok("instance-a", "etag-2")) == Action.CHECK_SCHEMA
    assert machine.state is HealthState.UP


def test_seeded_etag_same_on_first_success_asks_nothing() -> None:
    machine = HealthStateMachine(3, known_schema_etag="etag-1")
    assert machine.observe(ProbeResult.ok("instance-a", "etag-1")) == Action.NONE


def test_success_without_etag_is_not_a_schema_change() -> None:
    # A success that carries no schema_etag does not "show a new schema_etag" (the class
    # docstring); asking a schema check on it would re-fetch the schema at every probe.
    machine = HealthStateMachine(3, known_schema_etag="etag-1")
    assert machine.observe(ProbeResult.ok("instance-a")) == Action.NONE
    assert machine.observe(ProbeResult.ok("instance-a")) == Action.NONE


def test_schema_check_failed_makes_next_success_ask_again_once() -> None:
    machine = HealthStateMachine(3)
    machine.observe(OK)
    machine.schema_check_failed()
    assert machine.observe(OK) == Action.CHECK_SCHEMA
    assert machine.observe(OK) == Action.NONE


def test_schema_check_failed_survives_failures_in_between() -> None:
    machine = HealthStateMachine(5)
    machine.observe(OK)
    machine.schema_check_failed()
    observe_all(machine, [FAIL, FAIL])
    assert machine.observe(OK) == Action.CHECK_SCHEMA
    assert machine.observe(OK) == Action.NONE


def test_schema_check_failed_after_recovery_asks_again() -> None:
    machine = HealthStateMachine(1)
    observe_all(machine, [OK, FAIL])
    assert Action.CHECK_SCHEMA in machine.observe(OK)
    machine.schema_check_failed()
    action = machine.observe(OK)
    assert action == Action.CHECK_SCHEMA
    assert machine.observe(OK) == Action.NONE


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


def non_ok_runs(outcomes: list[str]) -> list[tuple[int, bool, bool]]:
    """Each maximal run of non-OK outcomes: (length, contains shut, followed by an OK)."""
    runs: list[tuple[int, bool, bool]] = []
    length, has_shut = 0, False
    for outcome in outcomes:
        if outcome == "ok":
            if length:
                runs.append((length, has_shut, True))
            length, has_shut = 0, False
        else:
            length += 1
            has_shut = has_shut or outcome == "shut"
    if length:
        runs.append((length, has_shut, False))
    return runs


def run_machine(outcomes: list[str], threshold: int) -> list[Action]:
    machine = HealthStateMachine(threshold)
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
    # Every recovery also asks a schema check.
    assert all(Action.CHECK_SCHEMA in actions[i] for i in recovered_indices(actions))


@given(outcomes_all, thresholds)
def test_property_downs_and_recovereds_alternate(outcomes: list[str], threshold: int) -> None:
    actions = run_machine(outcomes, threshold)
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
            assert Action.CHECK_SCHEMA not in action
