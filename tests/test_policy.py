"""Unit tests of ProbePolicy: validation, defaults and the delays it draws (pure, seeded)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.timing import worst_case_detection

SEEDS = range(200)

# --- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    policy = ProbePolicy()
    assert policy.polling_interval == 30.0
    assert policy.failure_threshold == 3
    assert policy.timeout == 5.0
    assert policy.jitter == 0.1
    assert policy.recovery_threshold == 1
    assert policy.failure_retry_interval == 5.0
    assert policy.retry_interval == 5.0


@pytest.mark.parametrize(
    ("polling_interval", "expected_retry"),
    [(30.0, 5.0), (5.0, 5.0), (6.0, 5.0), (2.0, 2.0), (0.25, 0.25)],
)
def test_default_retry_interval_is_min_of_5_and_polling(
    polling_interval: float, expected_retry: float
) -> None:
    policy = ProbePolicy(polling_interval=polling_interval)
    assert policy.failure_retry_interval == expected_retry
    assert policy.retry_interval == expected_retry


def test_given_retry_interval_is_kept() -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=12.0)
    assert policy.failure_retry_interval == 12.0
    assert policy.retry_interval == 12.0


def test_equal_policies_compare_equal() -> None:
    # The resolved default is the same value as the one given explicitly.
    assert ProbePolicy(polling_interval=2.0) == ProbePolicy(
        polling_interval=2.0, failure_retry_interval=2.0
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("polling_interval", 10.0),
        ("failure_threshold", 5),
        ("timeout", 1.0),
        ("failure_retry_interval", 1.0),
        ("jitter", 0.0),
        ("recovery_threshold", 2),
    ],
)
def test_policy_is_frozen(field: str, value: Any) -> None:
    policy = ProbePolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    assert getattr(policy, field) != value


# --- validation ---------------------------------------------------------------------------

BAD_POSITIVE = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "30", True, False]
BAD_COUNT = [0, -1, -10, True, False, 2.0, 1.5, math.nan, math.inf, "3", None]


@pytest.mark.parametrize("value", BAD_POSITIVE)
@pytest.mark.parametrize("field", ["polling_interval", "timeout", "failure_retry_interval"])
def test_interval_out_of_range_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ProbePolicy(**{field: value})


@pytest.mark.parametrize("field", ["polling_interval", "timeout"])
def test_interval_of_none_raises_naming_it(field: str) -> None:
    # Only failure_retry_interval has None as a meaning (its default).
    with pytest.raises(ValueError, match=field):
        ProbePolicy(**{field: None})


@pytest.mark.parametrize("value", BAD_COUNT)
@pytest.mark.parametrize("field", ["failure_threshold", "recovery_threshold"])
def test_threshold_out_of_range_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ProbePolicy(**{field: value})


@pytest.mark.parametrize("value", [-0.1, -1, 1, 1.0, 1.5, math.nan, math.inf, -math.inf, True])
def test_jitter_out_of_range_raises_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match="jitter"):
        ProbePolicy(jitter=value)


@pytest.mark.parametrize("value", ["0.1", None])
def test_jitter_of_the_wrong_type_raises_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match="jitter"):
        ProbePolicy(jitter=value)


def test_polling_interval_error_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"polling_interval.*-3"):
        ProbePolicy(polling_interval=-3)


def test_bad_polling_interval_is_reported_before_the_retry_default_is_derived() -> None:
    # The derived retry interval would be invalid too; the error names the argument given.
    with pytest.raises(ValueError, match="polling_interval"):
        ProbePolicy(polling_interval=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"polling_interval": 0.001},
        {"polling_interval": 1e6},
        {"failure_threshold": 1},
        {"failure_threshold": 100},
        {"timeout": 0.01},
        {"failure_retry_interval": 60.0},
        {"jitter": 0},
        {"jitter": 0.99},
        {"recovery_threshold": 10},
        {"polling_interval": 3},
    ],
)
def test_values_in_range_are_accepted(kwargs: dict[str, Any]) -> None:
    policy = ProbePolicy(**kwargs)
    for field, value in kwargs.items():
        assert getattr(policy, field) == value


# --- first_delay --------------------------------------------------------------------------


@pytest.mark.parametrize("polling_interval", [0.5, 5.0, 30.0, 600.0])
def test_first_delay_is_within_the_first_interval(polling_interval: float) -> None:
    policy = ProbePolicy(polling_interval=polling_interval)
    for seed in SEEDS:
        delay = policy.first_delay(random.Random(seed))
        assert 0.0 <= delay <= polling_interval


def test_first_delays_spread_over_the_interval() -> None:
    # Clients started together do not probe together: the delays cover the whole interval.
    policy = ProbePolicy(polling_interval=30.0)
    rng = random.Random(1234)
    delays = [policy.first_delay(rng) for _ in range(1000)]
    assert min(delays) < 3.0
    assert max(delays) > 27.0


def test_first_delay_is_reproducible_with_the_same_seed() -> None:
    policy = ProbePolicy()
    first = [policy.first_delay(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


# --- next_delay ---------------------------------------------------------------------------


def within_jitter(delay: float, base: float, jitter: float) -> bool:
    return base * (1 - jitter) <= delay <= base * (1 + jitter)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5])
def test_next_delay_when_settled_is_the_jittered_polling_interval(jitter: float) -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=2.0, jitter=jitter)
    for seed in SEEDS:
        delay = policy.next_delay(False, random.Random(seed))
        assert within_jitter(delay, 30.0, jitter)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5])
def test_next_delay_in_transition_is_the_jittered_retry_interval(jitter: float) -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=2.0, jitter=jitter)
    for seed in SEEDS:
        delay = policy.next_delay(True, random.Random(seed))
        assert within_jitter(delay, 2.0, jitter)


def test_next_delay_in_transition_uses_the_default_retry_interval() -> None:
    policy = ProbePolicy(polling_interval=60.0, jitter=0.0)
    assert policy.next_delay(True, random.Random(0)) == 5.0


def test_next_delay_with_zero_jitter_is_exact() -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=4.0, jitter=0.0)
    rng = random.Random(42)
    for _ in range(50):
        assert policy.next_delay(False, rng) == 30.0
        assert policy.next_delay(True, rng) == 4.0


def test_next_delay_actually_varies_with_jitter() -> None:
    policy = ProbePolicy(polling_interval=30.0, jitter=0.1)
    rng = random.Random(99)
    delays = {policy.next_delay(False, rng) for _ in range(50)}
    assert len(delays) > 1


@given(
    polling_interval=st.floats(min_value=0.01, max_value=3600.0),
    retry_interval=st.floats(min_value=0.01, max_value=3600.0),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    in_transition=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_property_next_delay_within_jitter_bounds(
    polling_interval: float,
    retry_interval: float,
    jitter: float,
    in_transition: bool,
    seed: int,
) -> None:
    policy = ProbePolicy(
        polling_interval=polling_interval,
        failure_retry_interval=retry_interval,
        jitter=jitter,
    )
    base = retry_interval if in_transition else polling_interval
    delay = policy.next_delay(in_transition, random.Random(seed))
    assert delay > 0
    # A relative tolerance for the rounding of base * (1 + u).
    assert base * (1 - jitter) * (1 - 1e-12) <= delay <= base * (1 + jitter) * (1 + 1e-12)


@given(
    polling_interval=st.floats(min_value=0.01, max_value=3600.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_property_first_delay_within_first_interval(polling_interval: float, seed: int) -> None:
    policy = ProbePolicy(polling_interval=polling_interval)
    assert 0.0 <= policy.first_delay(random.Random(seed)) <= polling_interval


# --- detection_bound_s --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"polling_interval": 10.0, "failure_threshold": 1, "timeout": 2.0, "jitter": 0.0},
        {"polling_interval": 60.0, "failure_retry_interval": 15.0, "failure_threshold": 4},
        {"polling_interval": 2.0, "timeout": 1.0, "jitter": 0.5, "recovery_threshold": 3},
    ],
)
def test_detection_bound_is_the_worst_case_detection_of_the_same_numbers(
    kwargs: dict[str, Any],
) -> None:
    policy = ProbePolicy(**kwargs)
    assert policy.detection_bound_s == worst_case_detection(
        policy.polling_interval,
        policy.retry_interval,
        policy.failure_threshold,
        policy.timeout,
        policy.jitter,
    )


def test_detection_bound_of_the_defaults() -> None:
    # 30 s to the next probe, two 5 s retries, each stretched by 10 % jitter, plus 3 timeouts.
    assert ProbePolicy().detection_bound_s == pytest.approx((30 + 2 * 5) * 1.1 + 3 * 5)


@given(
    polling_interval=st.floats(min_value=0.01, max_value=3600.0),
    failure_threshold=st.integers(min_value=1, max_value=20),
    timeout=st.floats(min_value=0.01, max_value=60.0),
    jitter=st.floats(min_value=0.0, max_value=0.99),
)
def test_property_detection_bound_matches_timing(
    polling_interval: float, failure_threshold: int, timeout: float, jitter: float
) -> None:
    policy = ProbePolicy(
        polling_interval=polling_interval,
        failure_threshold=failure_threshold,
        timeout=timeout,
        jitter=jitter,
    )
    expected = worst_case_detection(
        polling_interval, min(5.0, polling_interval), failure_threshold, timeout, jitter
    )
    assert policy.detection_bound_s == expected
    assert policy.detection_bound_s >= polling_interval + failure_threshold * timeout


# --- next_due: coalesced, always within the jitter window --------------------------------------


@pytest.mark.parametrize("in_transition", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_next_due_stays_within_the_jitter_window(in_transition: bool, seed: int) -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=5.0, jitter=0.1)
    rng = random.Random(seed)
    now = 1000.0 + seed * 0.37
    base = 5.0 if in_transition else 30.0
    for _ in range(50):
        due = policy.next_due(now, in_transition, rng)
        assert now + base * 0.9 - 1e-9 <= due <= now + base * 1.1 + 1e-9


def test_next_due_lands_many_clients_on_few_grid_points() -> None:
    policy = ProbePolicy(polling_interval=1.0, jitter=0.1)
    rng = random.Random(7)
    dues = {round(policy.next_due(100.0 + index * 0.001, False, rng), 6) for index in range(1000)}
    # 1,000 clients ending their probes over one second, each with a 0.2 s window: their next
    # probes share the 121 grid points (10 ms apart, a twentieth of the window) of
    # [100.9, 102.1], not 1,000 instants.
    assert len(dues) <= 121


def test_next_due_without_jitter_is_exact() -> None:
    policy = ProbePolicy(polling_interval=2.0, jitter=0.0)
    assert policy.next_due(10.037, False, random.Random(1)) == pytest.approx(12.037)


def test_next_due_of_a_short_interval_is_not_moved() -> None:
    # A 50 ms interval's jitter window (10 ms) is narrower than the grid: the target is kept.
    policy = ProbePolicy(polling_interval=0.05, jitter=0.1)
    rng = random.Random(3)
    for _ in range(20):
        due = policy.next_due(5.0, False, rng)
        assert 5.045 - 1e-9 <= due <= 5.055 + 1e-9


def test_held_waits_are_shortened_by_up_to_the_jitter_and_vary() -> None:
    policy = ProbePolicy(mode="watch", watch_wait=25.0, jitter=0.1)
    rng = random.Random(11)
    waits = [policy.held_wait(rng) for _ in range(200)]
    assert all(22.5 <= wait <= 25.0 for wait in waits)
    assert max(waits) - min(waits) > 2.0  # watchers started together drift apart
    assert ProbePolicy(mode="watch", watch_wait=25.0, jitter=0.0).held_wait(rng) == 25.0


@pytest.mark.parametrize("seed", range(10))
def test_a_re_probe_never_comes_later_than_the_retry_interval(seed: int) -> None:
    policy = ProbePolicy(polling_interval=30.0, failure_retry_interval=0.5, jitter=0.1)
    rng = random.Random(seed)
    for _ in range(100):
        assert 0.45 - 1e-9 <= policy.next_delay(True, rng) <= 0.5
        assert 0.45 - 1e-9 <= policy.next_due(0.0, True, rng) <= 0.5
