"""Wire cost of watching one idle agent: polling, watch mode and the legacy SSE stream.

Three agents on the project's runner, each behind its own `CountingRelay`, watched at the
same time: one by a polling `HealthCheckClient`, one by a watching one, one by the legacy
`SseClient`, all at their defaults. The relay counts what crosses the socket (HTTP headers
and bodies; not TCP/IP headers, handshakes or ACKs) and the connections opened. Every cycle
(a probe answered, a heartbeat received) records the relay's counters, so rates are taken
between cycle ends: whole cycles only, after `--warmup` (which holds each connection's
set-up). The cycles in the window are split into three equal runs, each giving one rate, so
figures are medians with their range. Per 1,000 agents is the per-agent figure times 1,000.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness.fleet import RUNNER, AgentProcess, launch_agent, run_secret, wait_ready
from bench.harness.relay import CountingRelay, Traffic
from bench.harness.report import Report, Spread, Table, Verdict
from rpc_common.protocol import HEARTBEAT_EVENT
from rpc_datasource import HealthCheckClient
from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.legacy.sse_client import SseClient
from rpc_datasource.legacy.sse_parser import SseEvent

SUMMARY = "bytes, requests and connections per agent-hour: polling, watch and legacy SSE"
SMOKE = [
    "--window",
    "6",
    "--warmup",
    "2",
    "--interval",
    "1",
    "--watch-wait",
    "1",
    "--max-wait",
    "1",
    "--heartbeat",
    "1",
]

PARTS = 3
JITTER = 0.1  # the clients' default: a held wait is shortened by up to this share
HOUR_S = 3600.0
AGENTS = 1000
DESIGNS = ("poll", "watch", "sse")
LABELS = {
    "poll": "polling",
    "watch": "watch mode",
    "sse": "legacy SSE",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=360.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the window")
    parser.add_argument("--interval", type=float, default=30.0, help="polling interval")
    parser.add_argument("--threshold", type=int, default=3, help="failure threshold")
    parser.add_argument("--timeout", type=float, default=5.0, help="probe timeout")
    parser.add_argument("--watch-wait", type=float, default=25.0, help="watch mode's wait")
    parser.add_argument(
        "--max-wait", type=float, default=None, help="the agent's FOREST_HEALTH_MAX_WAIT"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=None, help="the agent's FOREST_SSE_HEARTBEAT_INTERVAL"
    )
    parser.add_argument("--plot", type=Path, help="draw KiB per agent-hour to this PNG")


@dataclass(frozen=True)
class Mark:
    """The relay's counters at the end of one cycle."""

    at: float
    traffic: Traffic
    requests: int


class Recorder:
    """The marks of one design, one at each cycle's end (taken on the engine's loop or a
    callback thread). Requests are the marks so far unless `requests` counts them."""

    def __init__(self, relay: CountingRelay, requests: Callable[[], int] | None = None) -> None:
        self.relay = relay
        self._requests = requests
        self._marks: list[Mark] = []
        self._lock = threading.Lock()

    def mark(self) -> None:
        with self._lock:
            requests = self._requests() if self._requests else len(self._marks) + 1
            self._marks.append(Mark(time.monotonic(), self.relay.traffic(), requests))

    def marks(self) -> list[Mark]:
        with self._lock:
            return list(self._marks)


@dataclass(frozen=True)
class Part:
    """Rates over one run of whole cycles."""

    seconds: float
    cycles: int
    requests_h: float
    connections_h: float
    up_h: float
    down_h: float
    up_per_cycle: float
    down_per_cycle: float

    @classmethod
    def between(cls, first: Mark, last: Mark, cycles: int) -> Part:
        seconds = last.at - first.at
        per_hour = HOUR_S / seconds
        return cls(
            seconds,
            cycles,
            (last.requests - first.requests) * per_hour,
            (last.traffic.connections - first.traffic.connections) * per_hour,
            (last.traffic.bytes_up - first.traffic.bytes_up) * per_hour,
            (last.traffic.bytes_down - first.traffic.bytes_down) * per_hour,
            (last.traffic.bytes_up - first.traffic.bytes_up) / cycles,
            (last.traffic.bytes_down - first.traffic.bytes_down) / cycles,
        )


def parts_of(marks: list[Mark]) -> list[Part]:
    """The marks' cycles split into up to `PARTS` runs of (nearly) equal length."""
    cycles = len(marks) - 1
    count = min(PARTS, cycles)
    if count < 1:
        return []
    edges = [round(index * cycles / count) for index in range(count + 1)]
    return [
        Part.between(marks[start], marks[end], end - start)
        for start, end in itertools.pairwise(edges)
    ]


@dataclass
class Measured:
    """What one design showed."""

    design: str
    parts: list[Part]
    setup: Traffic  # at the first mark: the connection's set-up and first cycle, excluded
    window: Traffic  # over the fixed window, whole or not, as a cross-check
    window_s: float
    cycle_s: list[float]
    failures: int
    reconnections: int

    def spread(self, name: str) -> Spread:
        return Spread.of(getattr(part, name) for part in self.parts)


def _start_agents(workdir: Path, secret: str, settings: dict[str, str]) -> list[AgentProcess]:
    """One runner agent per design, launched together, each waited for."""
    launched = [
        launch_agent(RUNNER, workdir, secret, settings=settings, name=design) for design in DESIGNS
    ]
    try:
        return [wait_ready(agent) for agent in launched]
    except BaseException:
        for agent in launched:
            agent.end()
        raise


def _difference(after: Traffic, before: Traffic) -> Traffic:
    return Traffic(
        after.connections - before.connections,
        after.bytes_up - before.bytes_up,
        after.bytes_down - before.bytes_down,
    )


def _measure(
    args: argparse.Namespace, secret: str, relays: dict[str, CountingRelay]
) -> dict[str, Measured]:
    """Watch the three agents at once for the warm-up and the window."""
    recorders = {design: Recorder(relays[design]) for design in ("poll", "watch")}

    def marker(recorder: Recorder) -> Callable[[ProbeEvent], None]:
        return lambda _event: recorder.mark()

    policy = {
        "polling_interval": args.interval,
        "failure_threshold": args.threshold,
        "timeout": args.timeout,
    }
    poller = HealthCheckClient(
        relays["poll"].url, secret, **policy, hooks=[marker(recorders["poll"])], name="wire-poll"
    )
    watcher = HealthCheckClient(
        relays["watch"].url,
        secret,
        **policy,
        mode="watch",
        watch_wait=args.watch_wait,
        hooks=[marker(recorders["watch"])],
        name="wire-watch",
    )

    def on_event(event: SseEvent) -> None:
        if event.event == HEARTBEAT_EVENT:
            recorders["sse"].mark()

    sse = SseClient(
        f"{relays['sse'].url}/forest/sse",
        secret,
        heartbeat_interval=args.heartbeat or 10.0,
        connect_timeout=args.timeout,
        on_event=on_event,
    )
    recorders["sse"] = Recorder(relays["sse"], lambda: sse.connection_attempts)
    pause = threading.Event()
    try:
        poller.start()
        watcher.start()
        sse.start()
        pause.wait(args.warmup)
        opened = time.monotonic()
        at_open = {design: relays[design].traffic() for design in DESIGNS}
        pause.wait(args.window)
        closed = time.monotonic()
        at_close = {design: relays[design].traffic() for design in DESIGNS}
        failures = {"poll": poller.stats().failures, "watch": watcher.stats().failures, "sse": 0}
        reconnections = {"poll": 0, "watch": 0, "sse": sse.connection_attempts - 1}
    finally:
        poller.stop()
        watcher.stop()
        sse.close()
    measured = {}
    for design in DESIGNS:
        marks = [mark for mark in recorders[design].marks() if mark.at <= closed]
        in_window = [mark for mark in marks if mark.at >= opened]
        measured[design] = Measured(
            design,
            parts_of(in_window),
            marks[0].traffic if marks else Traffic(0, 0, 0),
            _difference(at_close[design], at_open[design]),
            closed - opened,
            [later.at - earlier.at for earlier, later in itertools.pairwise(in_window)],
            failures[design],
            reconnections[design],
        )
    return measured


def _kib(value: Spread) -> str:
    return Spread(value.median / 1024, value.low / 1024, value.high / 1024, value.repeats).render(1)


def _tables(measured: dict[str, Measured]) -> list[Table]:
    hourly = Table(
        "Per agent-hour, idle (median [range] over 3 runs of whole cycles)",
        [
            "design",
            "cycle (s)",
            "HTTP requests / h",
            "new connections / h",
            "KiB up / h",
            "KiB down / h",
            "KiB total / h",
            "KiB total / h, fixed window",
        ],
    )
    sizes = Table(
        "Bytes per cycle (a probe answered; for SSE a heartbeat), and the set-up left out",
        [
            "design",
            "cycles in the window",
            "bytes up / cycle",
            "bytes down / cycle",
            "set-up up / down (B)",
        ],
    )
    fleet = Table(
        f"Per {AGENTS:,} agents: the per-agent medians times {AGENTS:,} (a multiplication, "
        f"not a run of {AGENTS:,} agents)",
        [
            "design",
            "MiB up / h",
            "MiB down / h",
            "GiB / day, both ways",
            "mean kbit/s, both ways",
            "HTTP requests / s",
            "new connections / s",
        ],
    )
    for design, found in measured.items():
        total = Spread.of(part.up_h + part.down_h for part in found.parts)
        fixed = (found.window.bytes_up + found.window.bytes_down) * HOUR_S / found.window_s
        hourly.add(
            LABELS[design],
            Spread.of(found.cycle_s).render(1),
            found.spread("requests_h").render(0),
            found.spread("connections_h").render(0),
            _kib(found.spread("up_h")),
            _kib(found.spread("down_h")),
            _kib(total),
            f"{fixed / 1024:.1f}",
        )
        sizes.add(
            LABELS[design],
            len(found.cycle_s),
            found.spread("up_per_cycle").render(0),
            found.spread("down_per_cycle").render(0),
            f"{found.setup.bytes_up} / {found.setup.bytes_down}",
        )
        up, down = found.spread("up_h").median, found.spread("down_h").median
        fleet.add(
            LABELS[design],
            f"{up * AGENTS / 2**20:.1f}",
            f"{down * AGENTS / 2**20:.1f}",
            f"{(up + down) * AGENTS * 24 / 2**30:.2f}",
            f"{(up + down) * AGENTS * 8 / HOUR_S / 1000:.1f}",
            f"{found.spread('requests_h').median * AGENTS / HOUR_S:.1f}",
            f"{found.spread('connections_h').median * AGENTS / HOUR_S:.1f}",
        )
    return [hourly, sizes, fleet]


def _verdicts(args: argparse.Namespace, measured: dict[str, Measured]) -> list[Verdict]:
    clean = all(found.failures == 0 and found.reconnections == 0 for found in measured.values())
    whole = {design: len(found.parts) for design, found in measured.items()}
    held_for = min(args.watch_wait, args.max_wait if args.max_wait is not None else 30.0)
    watch_cycle = Spread.of(measured["watch"].cycle_s).median
    totals = {
        design: Spread.of(part.up_h + part.down_h for part in found.parts).median
        for design, found in measured.items()
    }
    ranking = sorted(totals, key=lambda design: totals[design])
    return [
        Verdict(
            "every design watched without a failure or a reconnection",
            clean,
            ", ".join(
                f"{LABELS[d]}: {f.failures} failures, {f.reconnections} reconnections"
                for d, f in measured.items()
            ),
        ),
        Verdict(
            f"each design shows {PARTS} runs of whole cycles in the window",
            all(count == PARTS for count in whole.values()),
            ", ".join(f"{LABELS[d]}: {len(measured[d].cycle_s)} cycles" for d in DESIGNS),
        ),
        Verdict(
            "the agent held the watches (no fallback to polling)",
            watch_cycle >= 0.8 * (1 - JITTER) * held_for,
            f"median cycle {watch_cycle:.2f} s; the client asks for {held_for:g} s less up to "
            f"{JITTER:.0%} (its jitter)",
        ),
        Verdict(
            "least bytes per agent-hour",
            None,
            " < ".join(f"{LABELS[d]} {totals[d] / 1024:.1f} KiB" for d in ranking),
        ),
    ]


def _plot(measured: dict[str, Measured], path: Path, settings: str) -> None:
    """Stacked bars: KiB up and down per agent-hour, with the range of the total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [LABELS[design] for design in measured]
    up = [found.spread("up_h").median / 1024 for found in measured.values()]
    down = [found.spread("down_h").median / 1024 for found in measured.values()]
    totals = [Spread.of((p.up_h + p.down_h) / 1024 for p in f.parts) for f in measured.values()]
    errors = [
        [total.median - total.low for total in totals],
        [total.high - total.median for total in totals],
    ]
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.bar(names, up, label="up (master to agent)", color="#4c72b0")
    axes.bar(names, down, bottom=up, label="down (agent to master)", color="#dd8452")
    axes.errorbar(
        names, [t.median for t in totals], yerr=errors, fmt="none", ecolor="black", capsize=4
    )
    axes.set_ylabel("KiB per agent-hour (HTTP bytes)")
    axes.set_title(f"Wire cost of watching one idle agent\n{settings}", fontsize=10)
    axes.set_ylim(0, 1.3 * max(t.high for t in totals))
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace, command: str) -> Report:
    report = Report("wire_cost", command)
    settings = {}
    if args.max_wait is not None:
        settings["FOREST_HEALTH_MAX_WAIT"] = f"{args.max_wait:g}"
    if args.heartbeat is not None:
        settings["FOREST_SSE_HEARTBEAT_INTERVAL"] = f"{args.heartbeat:g}"
    secret = run_secret()
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        agents = _start_agents(Path(workdir), secret, settings)
        for agent in agents:
            stack.callback(agent.end)
        relays = {
            design: stack.enter_context(CountingRelay(agent.port))
            for design, agent in zip(DESIGNS, agents, strict=True)
        }
        measured = _measure(args, secret, relays)
    report.tables = _tables(measured)
    report.verdicts = _verdicts(args, measured)
    report.data = {
        "settings": {
            "interval": args.interval,
            "threshold": args.threshold,
            "timeout": args.timeout,
            "watch_wait": args.watch_wait,
            "agent": settings,
            "warmup": args.warmup,
            "window": args.window,
        },
        "designs": {design: asdict(found) for design, found in measured.items()},
    }
    if args.plot is not None:
        described = (
            f"polling every {args.interval:g} s, watch_wait {args.watch_wait:g} s, "
            f"SSE heartbeat {args.heartbeat or 10.0:g} s"
        )
        _plot(measured, args.plot, described)
    return report
