"""Unit tests of the pure probe timing rules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.health.timing import (
    coalesced,
    default_failure_retry_interval,
    first_probe_delay,
    jittered,
    reconnect_backoff,
    worst_case_detection,
)

DRAWS = 5000


@pytest.mark.parametrize(("interval", "fraction"), [(10.0, 0.2), (30.0, 0.1), (1.0, 0.5)])
def test_jittered_stays_within_fraction(interval: float, fraction: float) -> None:
    rng = random.Random(1234)
    values = [jittered(interval, fraction, rng) for _ in range(DRAWS)]
    low, high = interval * (1 - fraction), interval * (1 + fraction)
    assert all(low <= value <= high for value in values)
    # It really spreads over the band, on both sides of the interval.
    spread = interval * fraction
    assert min(values) < interval - 0.9 * spread
    assert max(values) > interval + 0.9 * spread


def test_jittered_is_deterministic_for_a_seed() -> None:
    first = [jittered(10.0, 0.2, random.Random(7)) for _ in range(3)]
    second = [jittered(10.0, 0.2, random.Random(7)) for _ in range(3)]
    assert first == second


@pytest.mark.parametrize("interval", [0.5, 5.0, 30.0])
def test_jittered_fraction_zero_is_exact(interval: float) -> None:
    rng = random.Random(99)
    assert all(jittered(interval, 0.0, rng) == interval for _ in range(200))


@pytest.mark.parametrize("interval", [1.0, 30.0, 300.0])
def test_first_probe_delay_within_first_interval(interval: float) -> None:
    rng = random.Random(42)
    values = [first_probe_delay(interval, rng) for _ in range(DRAWS)]
    assert all(0.0 <= value <= interval for value in values)
    # Clients started together spread over the whole interval.
    assert min(values) < 0.05 * interval
    assert max(values) > 0.95 * interval


@pytest.mark.parametrize(
    ("polling", "expected"),
    [(30.0, 5.0), (5.0, 5.0), (5.5, 5.0), (2.0, 2.0), (0.5, 0.5)],
)
def test_default_failure_retry_interval(polling: float, expected: float) -> None:
    assert default_failure_retry_interval(polling) == expected


@pytest.mark.parametrize(
    ("polling", "retry", "threshold", "timeout", "expected"),
    [
        (30.0, 5.0, 3, 5.0, 30.0 + 2 * 5.0 + 3 * 5.0),  # 55
        (30.0, 5.0, 1, 5.0, 30.0 + 0.0 + 5.0),  # 35
        (10.0, 2.0, 5, 1.0, 10.0 + 4 * 2.0 + 5 * 1.0),  # 23
        (60.0, 5.0, 4, 0.5, 60.0 + 3 * 5.0 + 4 * 0.5),  # 77
    ],
)
def test_worst_case_detection_without_jitter(
    polling: float, retry: float, threshold: int, timeout: float, expected: float
) -> None:
    assert worst_case_detection(polling, retry, threshold, timeout) == pytest.approx(expected)
    assert worst_case_detection(polling, retry, threshold, timeout, 0.0) == pytest.approx(expected)


def test_worst_case_detection_example_is_55() -> None:
    assert worst_case_detection(30.0, 5.0, 3, 5.0) == pytest.approx(55.0)


@pytest.mark.parametrize("jitter", [0.05, 0.1, 0.25])
def test_worst_case_detection_stretches_waits_by_jitter(jitter: float) -> None:
    # Waits (30 + 2*5 = 40 s) stretch by the fraction; the timeouts (3 * 5 s) do not.
    expected = 40.0 * (1.0 + jitter) + 15.0
    assert worst_case_detection(30.0, 5.0, 3, 5.0, jitter) == pytest.approx(expected)


def test_worst_case_detection_grows_with_jitter() -> None:
    values = [worst_case_detection(30.0, 5.0, 3, 5.0, j) for j in (0.0, 0.1, 0.2, 0.3)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_reconnect_backoff_sequence() -> None:
    assert [reconnect_backoff(attempt) for attempt in range(1, 7)] == [
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]


def test_reconnect_backoff_stays_capped_for_many_attempts() -> None:
    assert all(reconnect_backoff(attempt) == 30.0 for attempt in range(5, 200))


@pytest.mark.parametrize("attempt", [1025, 5000, 10**6])
def test_reconnect_backoff_after_a_very_long_outage(attempt: int) -> None:
    # The SSE client counts failures in a row without bound; a long outage (about 1025
    # reconnects at 30 s, some 8.5 hours) must still give the cap, not raise.
    assert reconnect_backoff(attempt) == 30.0


def test_reconnect_backoff_custom_base_and_cap() -> None:
    assert [reconnect_backoff(a, base=1.0, cap=5.0) for a in range(1, 6)] == [
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]


# --- coalescing probe times onto a grid ------------------------------------------------------


def test_coalesced_picks_the_nearest_grid_point_inside_the_window() -> None:
    assert coalesced(10.04, 9.9, 10.1, 0.1) == pytest.approx(10.0)
    assert coalesced(10.07, 9.9, 10.1, 0.1) == pytest.approx(10.1)


def test_coalesced_never_leaves_the_window() -> None:
    # The nearest grid point (10.0) is below the window: the one above is taken.
    assert coalesced(10.02, 10.01, 10.2, 0.1) == pytest.approx(10.1)


def test_coalesced_keeps_the_target_when_no_grid_point_fits() -> None:
    assert coalesced(10.04, 10.03, 10.05, 0.1) == 10.04
    assert coalesced(7.3, 7.3, 7.3, 0.1) == 7.3  # no jitter: a window of one point


@given(
    target=st.floats(0, 1e6, allow_nan=False),
    below=st.floats(0, 5),
    above=st.floats(0, 5),
    grid=st.floats(0.01, 2),
)
def test_coalesced_is_always_inside_the_window_or_the_target(
    target: float, below: float, above: float, grid: float
) -> None:
    low, high = target - below, target + above
    moved = coalesced(target, low, high, grid)
    assert moved == target or low <= moved <= high
