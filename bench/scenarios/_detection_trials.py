"""The designs, the faults and one trial of the `detection` scenario.

A trial is one warehouse agent watched by one client of every design at once (a paired
comparison: every design sees the same fault). Each client is started on its own random
offset before the fault, so the fault strikes at a random phase of each design's cycle;
then the fault is injected and every design's first down after it is timed.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.fleet import AgentProcess
from bench.harness.relay import CountingRelay
from rpc_common.protocol import HEARTBEAT_EVENT
from rpc_datasource import HealthCheckClient
from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.policy import WATCH_START_SPREAD_S, ProbePolicy
from rpc_datasource.legacy.sse_client import SILENCE_HEARTBEATS, SseClient
from rpc_datasource.legacy.sse_parser import SseEvent
from rpc_datasource.runtime.engine import Engine

SSE_ROUTE = "/forest/sse"
FAULTS = ("stop", "crash", "freeze", "blackhole", "readiness")
FAULT_LABELS = {
    "stop": "graceful stop (SIGTERM)",
    "crash": "crash (SIGKILL)",
    "freeze": "freeze (SIGSTOP)",
    "blackhole": "black-holed path",
    "readiness": "failing readiness check",
}
# Once its first probe (or stream) may have come, a client has this long to be up.
UP_MARGIN_S = 1.0
# The SSE client's only callback is on_rpc_stop; a lost stream it only logs and reconnects.
SSE_STOP = "sse-stop"
SSE_LOST = "sse-lost"


@dataclass(frozen=True)
class Design:
    """One way of watching an agent, at the settings it is measured with."""

    name: str
    label: str
    cycle_s: float  # the cycle whose phase the fault strikes at random
    first_s: float  # how long after its start a client's first probe (or stream) may come
    policy: ProbePolicy | None = None  # None: the legacy SSE client
    heartbeat_s: float = 10.0
    connect_timeout_s: float = 5.0

    @property
    def rows(self) -> tuple[str, ...]:
        """What is reported for it: its down, or for SSE on_rpc_stop and the lost stream."""
        return (self.name,) if self.policy is not None else (SSE_STOP, SSE_LOST)

    def bound_s(self, row: str, fault: str, check_interval_s: float) -> float | None:
        """The worst case from its code (None: it never fires for this fault).

        A HealthCheckClient: `detection_bound_s`, plus the agent's check interval for a
        failing check. SSE: on_rpc_stop comes only with the agent's stop event, sent at once;
        a stream that ends is noticed at once, a silent one after 3 heartbeat intervals of
        silence; a failing check leaves the heartbeats flowing.
        """
        if self.policy is not None:
            extra = check_interval_s if fault == "readiness" else 0.0
            return self.policy.detection_bound_s + extra
        if row == SSE_STOP:
            return 0.0 if fault == "stop" else None
        return None if fault == "readiness" else SILENCE_HEARTBEATS * self.heartbeat_s

    def window_s(self, row: str, fault: str, check_interval_s: float) -> float:
        """How long after the fault a detection is waited for: the bound, 20 % and 3 s more
        (for SSE, its silence bound whatever the fault)."""
        bound = (
            self.bound_s(row, fault, check_interval_s)
            if self.policy is not None
            else SILENCE_HEARTBEATS * self.heartbeat_s
        )
        return 1.2 * (bound or 0.0) + 3.0


def designs(watch_wait_s: float, heartbeat_s: float) -> dict[str, Design]:
    """Every design, by name."""
    fast_policy = ProbePolicy(
        polling_interval=1.0, failure_threshold=3, timeout=1.0, failure_retry_interval=0.5
    )
    fast_watch = dataclasses.replace(fast_policy, mode="watch", watch_wait=5.0)
    default_watch = ProbePolicy(mode="watch", watch_wait=watch_wait_s)
    return {
        "poll-default": Design(
            name="poll-default",
            label="polling, defaults (30 s; N 3; timeout 5 s; retry 5 s)",
            cycle_s=30.0,
            first_s=30.0,
            policy=ProbePolicy(),
        ),
        "poll-fast": Design(
            name="poll-fast",
            label="polling, fast (1 s; N 3; timeout 1 s; retry 0.5 s)",
            cycle_s=1.0,
            first_s=1.0,
            policy=fast_policy,
        ),
        "watch": Design(
            name="watch",
            label=f"watch, defaults (wait {watch_wait_s:g} s; 30 s; N 3; 5 s; 5 s)",
            cycle_s=watch_wait_s,
            first_s=WATCH_START_SPREAD_S,
            policy=default_watch,
        ),
        "watch-fast": Design(
            name="watch-fast",
            label="watch, fast (wait 5 s; 1 s; N 3; 1 s; 0.5 s)",
            cycle_s=5.0,
            first_s=WATCH_START_SPREAD_S,
            policy=fast_watch,
        ),
        "sse": Design(
            name="sse",
            label=f"legacy SSE (heartbeat {heartbeat_s:g} s; connect timeout 5 s)",
            cycle_s=heartbeat_s,
            first_s=0.0,
            heartbeat_s=heartbeat_s,
        ),
    }


ROW_LABELS = {
    SSE_STOP: "legacy SSE: on_rpc_stop",
    SSE_LOST: "legacy SSE: stream lost (log only)",
}


def row_label(row: str, known: dict[str, Design]) -> str:
    return ROW_LABELS.get(row) or known[row].label


@dataclass
class Seen:
    """What one row of one trial saw, in monotonic seconds."""

    started: float | None = None
    up: float | None = None  # its first success: a probe answered 200, or a heartbeat
    last_ok: float | None = None
    downs: list[float] = field(default_factory=list)

    def ok(self, at: float) -> None:
        self.last_ok = at
        if self.up is None:
            self.up = at


@dataclass
class Trial:
    """One agent, one fault, a client of every design."""

    fault: str
    index: int
    agent: AgentProcess
    db_path: Path
    relay: CountingRelay | None
    offsets: dict[str, float]  # design: started this long before the fault
    seen: dict[str, Seen]  # row: what it saw
    changed: threading.Event = field(default_factory=threading.Event)
    fault_at: float | None = None
    since_ok: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def url(self) -> str:
        return self.relay.url if self.relay is not None else self.agent.url

    def noted(self, seen: Seen) -> Callable[[], None]:
        """A callback that notes a down (or a lost stream) in `seen` and wakes the trial."""

        def note() -> None:
            seen.downs.append(time.monotonic())
            self.changed.set()

        return note

    def detected(self, row: str) -> bool:
        return self.fault_at is not None and any(t >= self.fault_at for t in self.seen[row].downs)


class TimedSseClient(SseClient):
    """The legacy client, noting when each stream ends: it logs that and reconnects, and
    tells the application nothing (its one callback is `on_rpc_stop`)."""

    def __init__(self, *args: object, on_stream_end: Callable[[], None], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._on_stream_end = on_stream_end

    async def _follow_stream(self, engine: Engine) -> None:
        await super()._follow_stream(engine)
        self._on_stream_end()


def start_client(
    design: Design, trial: Trial, rng: random.Random, lateness: list[float]
) -> Callable[[], None]:
    """Start `design`'s client on the trial's agent (or its relay); returns its stop."""
    secret = trial.agent.secret
    if design.policy is not None:
        seen = trial.seen[design.name]

        def hook(event: ProbeEvent) -> None:
            lateness.append(event.lateness_s)
            if event.result.succeeded:
                seen.ok(time.monotonic())

        client = HealthCheckClient(
            trial.url,
            secret,
            policy=design.policy,
            on_server_down=trial.noted(seen),
            hooks=[hook],
            rng=rng,
        )
        seen.started = time.monotonic()
        client.start()
        return client.stop
    both = (trial.seen[SSE_STOP], trial.seen[SSE_LOST])

    def on_event(event: SseEvent) -> None:
        if event.event == HEARTBEAT_EVENT:
            at = time.monotonic()
            for seen in both:
                seen.ok(at)

    sse = TimedSseClient(
        trial.url + SSE_ROUTE,
        secret,
        trial.noted(both[0]),
        heartbeat_interval=design.heartbeat_s,
        connect_timeout=design.connect_timeout_s,
        on_event=on_event,
        rng=rng,
        on_stream_end=trial.noted(both[1]),
    )
    for seen in both:
        seen.started = time.monotonic()
    sse.start()
    return sse.close


def inject(trial: Trial) -> float:
    """Strike the trial's fault; the monotonic time just before it."""
    at = time.monotonic()
    if trial.fault == "stop":
        trial.agent.send_signal(signal.SIGTERM)
    elif trial.fault == "crash":
        trial.agent.signal_all(signal.SIGKILL)
    elif trial.fault == "freeze":
        trial.agent.signal_all(signal.SIGSTOP)
    elif trial.fault == "blackhole":
        assert trial.relay is not None, "a black-holed path needs its relay"
        trial.relay.blackhole()
    else:
        os.replace(trial.db_path, trial.db_path.with_name(trial.db_path.name + ".away"))
    return at


def run_trial(
    trial: Trial,
    fault_due: float,
    plan: list[tuple[Design, random.Random]],
    windows: dict[str, float],
    lateness: list[float],
    abort: threading.Event,
) -> None:
    """Start each client at its offset, strike at `fault_due`, wait until every row has
    detected or its window passed; then stop the clients and end the agent and relay."""
    stops: list[Callable[[], None]] = []
    try:
        for design, rng in sorted(plan, key=lambda item: -trial.offsets[item[0].name]):
            if abort.wait(max(0.0, fault_due - trial.offsets[design.name] - time.monotonic())):
                return
            stops.append(start_client(design, trial, rng, lateness))
        if abort.wait(max(0.0, fault_due - time.monotonic())):
            return
        trial.fault_at = inject(trial)
        trial.since_ok = {
            row: None if seen.last_ok is None else trial.fault_at - seen.last_ok
            for row, seen in trial.seen.items()
        }
        ends = {row: trial.fault_at + window for row, window in windows.items()}
        while not abort.is_set():
            now = time.monotonic()
            pending = [end for row, end in ends.items() if end > now and not trial.detected(row)]
            if not pending:
                return
            trial.changed.wait(max(pending) - now)
            trial.changed.clear()
    except Exception as error:  # reported with the trial, the others go on
        trial.error = repr(error)
    finally:
        for stop in stops:
            stop()
        if trial.relay is not None:
            trial.relay.close()
        trial.agent.end()  # SIGKILL ends a frozen session too
