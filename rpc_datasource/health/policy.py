"""`ProbePolicy`: when to probe and when to give up, as one frozen, validated value (pure)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from rpc_datasource.health.timing import (
    coalesced,
    default_failure_retry_interval,
    first_probe_delay,
    worst_case_detection,
)

ProbeMode = Literal["poll", "watch"]
WATCH_START_SPREAD_S = 1.0
# Probe times snap to a grid of this share of the jitter window, this fine at least and at
# most this coarse (see `next_due`). The probes that share a grid point start one after
# another in one turn of the loop, so a coarser grid makes the last of them later.
GRID_SHARE_OF_WINDOW = 1 / 20
FINEST_GRID_S = 0.01
COARSEST_GRID_S = 1.0


# The one rule for each knob, for `ProbePolicy` and `DatasourceSettings` alike.


def check_seconds(name: str, value: float) -> float:
    """`value` if it is a finite number of seconds above 0; else `ValueError` naming `name`."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number greater than 0, got {value!r}")
    return value


def check_count(name: str, value: int) -> int:
    """`value` if it is a whole number of at least 1; else `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ProbePolicy:
    """Intervals, jitter, thresholds and timeout of one client, checked once when made.

    `failure_retry_interval` (default `min(5 s, polling_interval)`) is the faster re-probe
    while an outage is being confirmed or ended, like HAProxy's `fastinter`.
    """

    polling_interval: float = 30.0
    failure_threshold: int = 3
    timeout: float = 5.0
    failure_retry_interval: float | None = None
    jitter: float = 0.1
    recovery_threshold: int = 1
    mode: ProbeMode = "poll"
    watch_wait: float = 25.0

    def __post_init__(self) -> None:
        check_seconds("polling_interval", self.polling_interval)
        check_count("failure_threshold", self.failure_threshold)
        check_seconds("timeout", self.timeout)
        if self.failure_retry_interval is None:
            retry = default_failure_retry_interval(self.polling_interval)
            object.__setattr__(self, "failure_retry_interval", retry)
        check_seconds("failure_retry_interval", self.retry_interval)
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter < 1):
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        check_count("recovery_threshold", self.recovery_threshold)
        if self.mode not in ("poll", "watch"):
            raise ValueError(f"mode must be 'poll' or 'watch', got {self.mode!r}")
        check_seconds("watch_wait", self.watch_wait)

    @property
    def retry_interval(self) -> float:
        """`failure_retry_interval`, resolved to a number."""
        assert self.failure_retry_interval is not None
        return self.failure_retry_interval

    @property
    def detection_bound_s(self) -> float:
        """The longest an outage can go unnoticed (see `timing.worst_case_detection`).

        In watch mode a frozen agent is found when its held request times out, after
        `watch_wait + timeout`, then N-1 re-probes; the polling bound still holds when the
        agent does not hold watches, so the larger of the two is the bound.
        """
        polling = worst_case_detection(
            self.polling_interval,
            self.retry_interval,
            self.failure_threshold,
            self.timeout,
            self.jitter,
        )
        if self.mode == "poll":
            return polling
        held = self.watch_wait + worst_case_detection(
            0.0, self.retry_interval, self.failure_threshold, self.timeout, self.jitter
        )
        return max(polling, held)

    def first_delay(self, rng: random.Random) -> float:
        """Delay of a client's first probe: anywhere in its first interval (in watch mode,
        in its first second at most: the held requests follow at once anyway)."""
        spread = self.polling_interval
        if self.mode == "watch":
            spread = min(spread, WATCH_START_SPREAD_S)
        return first_probe_delay(spread, rng)

    def next_delay(self, in_transition: bool, rng: random.Random) -> float:
        """Delay to the next probe: the polling interval jittered either way, or, while a
        state change is being confirmed, the retry interval shortened by up to the jitter
        (a re-probe never comes later than `failure_retry_interval`)."""
        low, high = self._window(in_transition)
        return low + (high - low) * rng.random()

    def next_due(self, now: float, in_transition: bool, rng: random.Random) -> float:
        """When the next probe is due: `now + next_delay`, moved to the nearest point of a
        time grid (a twentieth of the window, 10 ms to 1 s) that lies inside the window, so
        that many clients share wake-ups.

        The result always stays within the jitter bounds of the interval; with no jitter
        (or a window narrower than the grid) it is exactly `now + next_delay`.
        """
        low, high = self._window(in_transition)
        target = now + self.next_delay(in_transition, rng)
        grid = min(COARSEST_GRID_S, max(FINEST_GRID_S, (high - low) * GRID_SHARE_OF_WINDOW))
        return coalesced(target, now + low, now + high, grid)

    def held_wait(self, rng: random.Random) -> float:
        """How long a watch asks to be held: `watch_wait` shortened by up to the jitter, so
        that many watchers started together do not stay in step, cycle after cycle."""
        return round(self.watch_wait * (1.0 - self.jitter * rng.random()), 3)

    def _window(self, in_transition: bool) -> tuple[float, float]:
        """The delays the jitter allows, [low, high]."""
        if in_transition:
            return self.retry_interval * (1.0 - self.jitter), self.retry_interval
        spread = self.polling_interval * self.jitter
        return self.polling_interval - spread, self.polling_interval + spread
